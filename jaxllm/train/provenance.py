"""Where a checkpoint's model came from, stored in every checkpoint's meta item (jaxllm.train.checkpoint.save):
the prepared data it descends from (its hash, sources, counts and tokenizer), the run it started from, its stage.

An exported model's card and `python -m jaxllm.inspect` read it back (jaxllm.eval.lineage). Not the place that
follows a lineage from run to run or prints it: this only computes what one checkpoint records.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib

from jaxllm import storage
from jaxllm.config import Config

MANIFEST, REPORT = "manifest.json", "report.json"  # what jaxllm.data.prepare writes into a prepared directory
TIMINGS = ("seconds", "workers", "docs_per_second")  # how long a preparation took, not what it made


def data_hash(manifest: dict, report: dict | None) -> str:
    """sha256 of what prepared data is: its manifest (sources, every data setting but the cache's location, each
    document's sha256 and split, the splits' sizes, the tokenizer's sha256, the preparing code's version) and its
    cleaning report's counts (per stage and rule, PII replaced, languages, near-duplicate clusters), both without
    timings, so that preparing the same inputs the same way again gives the same hash."""
    manifest = {k: v for k, v in manifest.items() if k not in TIMINGS}
    manifest["data"] = {k: v for k, v in manifest["data"].items() if k != "cache_dir"}
    counts = None if report is None else {k: v for k, v in report.items() if k not in TIMINGS}
    canonical = json.dumps({"manifest": manifest, "report": counts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@functools.cache
def data_card(prepared_dir: pathlib.Path) -> dict:
    """The figures of a prepared directory that a checkpoint keeps, with its data_hash. Cached: a prepared directory
    never changes once published, and its manifest lists every document (large for a large corpus)."""
    manifest = json.loads((prepared_dir / MANIFEST).read_text())
    report = json.loads((prepared_dir / REPORT).read_text()) if (prepared_dir / REPORT).is_file() else None
    stages = list((report or {}).get("stages", {}).items())
    cleaning = None
    if stages:
        cleaning = {
            "documents_in": stages[0][1]["docs_in"],
            "documents_kept": stages[-1][1]["docs_out"],
            "removed": {name: c["docs_in"] - c["docs_out"] for name, c in stages if c["docs_in"] != c["docs_out"]},
            "pii_replaced": report.get("pii_replaced", {}),
        }
    return {
        "hash": data_hash(manifest, report),
        "dir": str(prepared_dir),
        "sources": manifest["data"]["sources"],
        "splits": {name: {k: s[k] for k in ("documents", "tokens", "bytes")} for name, s in manifest["splits"].items()},
        "cleaning": cleaning,
        "tokenizer": {
            "kind": manifest["data"]["tokenizer"],
            "vocab_size": manifest["vocab_size"],
            "sha256": manifest["tokenizer_sha256"],
        },
    }


def of_checkpoint(cfg: Config, tokenizer_path: pathlib.Path, parent_meta: dict | None) -> dict:
    """What a checkpoint of this run records: {'stage', 'tokenizer_sha256', 'data', 'parent'}. 'data' is the data
    card of the prepared data the model descends from: a pretraining run's own (its tokenizer file lives in the
    prepared directory), a post-training run's start's. parent_meta: the meta of the checkpoint that
    train.init_from names (None when it names none or a Hugging Face directory)."""
    prepared = pathlib.Path(tokenizer_path).resolve().parent
    start = cfg.train.init_from
    parent, data = None, data_card(prepared) if (prepared / MANIFEST).is_file() else None
    if start.startswith("hf:"):
        parent = {"hf_dir": str(pathlib.Path(start.removeprefix("hf:")).resolve())}
    elif start:
        record = (parent_meta or {}).get("provenance", {})
        data = data or record.get("data")
        parent = {
            "run_dir": storage.resolve(start),
            "step": (parent_meta or {}).get("step"),
            "stage": record.get("stage"),
            "data_hash": (record.get("data") or {}).get("hash"),
            "tokenizer_sha256": record.get("tokenizer_sha256"),
        }
    return {
        "stage": cfg.posttrain.stage or "pretraining",
        "tokenizer_sha256": storage.file_sha256(tokenizer_path),
        "data": data,
        "parent": parent,
    }


def of_import(hf_dir: pathlib.Path, tokenizer_path: pathlib.Path) -> dict:
    """What an imported checkpoint (python -m jaxllm.hf import) records: its parent is the Hugging Face directory,
    whatever the config it brought (a jaxllm export's) says the model started from; its data is not known here."""
    return {
        "stage": "imported",
        "tokenizer_sha256": storage.file_sha256(tokenizer_path),
        "data": None,
        "parent": {"hf_dir": str(pathlib.Path(hf_dir).resolve())},
    }
