"""`python -m jaxllm.bench budget`: a budgeted base run against the fixed configuration, and both against compressors.

Each run is a fresh `python -m jaxllm.train` process (so the budget's clock starts at process start, as a user's
does), one after the other on this machine: base with --train.budget=B, then experiments/base_fixed.py (the
700-step 4 x 256 model base was before budgets), unless --fixed=none. Afterwards every held-out document of each
run's data is scored as a whole: by the model (non-overlapping windows of its context, each document from its
<bos>) and by gzip -9, bz2 -9 and xz -9e, each compressing each document on its own. Bits per byte count every
UTF-8 byte of the documents, so the figures of models with different tokenizers and of compressors compare.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import load_experiment, parse_duration
from jaxllm.data.prepare import prepare
from jaxllm.model.scoring import token_logprobs
from jaxllm.train.checkpoint import load_run
from jaxllm.train.metrics import read_jsonl

COMPRESSORS = {
    "gzip -9": lambda b: gzip.compress(b, compresslevel=9, mtime=0),
    "bz2 -9": lambda b: bz2.compress(b, compresslevel=9),
    "xz -9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def held_out_documents(val_tokens: np.ndarray, bos: int) -> list[np.ndarray]:
    """The held-out split's documents (each starts with the tokenizer's <bos> id), as token arrays."""
    starts = np.flatnonzero(val_tokens == bos)
    return [np.asarray(val_tokens[a:b]) for a, b in zip(starts, list(starts[1:]) + [len(val_tokens)])]


def compressor_bpb(texts: list[bytes]) -> dict[str, float]:
    total = sum(len(t) for t in texts)
    return {name: 8 * sum(len(fn(t)) for t in texts) / total for name, fn in COMPRESSORS.items()}


def model_bpb(run_dir: pathlib.Path, docs: list[np.ndarray], batch: int = 16) -> tuple[float, int]:
    """(bits per byte, bytes) of the run's model over whole documents: windows of block_size + 1 tokens stepping by
    block_size, so every token after each <bos> is predicted once, from at most block_size tokens before it."""
    run = load_run(run_dir)
    length = run.cfg.model.block_size
    table = np.asarray(run.tokenizer.token_bytes())
    rows, masks = [], []
    for doc in docs:
        for start in range(0, len(doc) - 1, length):
            window = doc[start : start + length + 1]
            row = np.zeros(length + 1, np.int32)
            row[: len(window)] = window
            rows.append(row)
            masks.append(np.arange(length) < len(window) - 1)
    rows, masks = np.stack(rows), np.stack(masks)
    score = jax.jit(lambda p, i, t: token_logprobs(p, run.graphdef, i, t))
    nats = 0.0
    for i in range(0, len(rows), batch):
        part, mask = rows[i : i + batch], masks[i : i + batch]
        pad = batch - len(part)
        part = np.concatenate([part, np.zeros((pad, length + 1), np.int32)])
        logp = np.asarray(score(run.params, jnp.asarray(part[:, :-1]), jnp.asarray(part[:, 1:])))[: batch - pad]
        nats -= float((logp * mask).sum())
    n_bytes = int(sum(table[doc[1:]].sum() for doc in docs))
    return nats / np.log(2) / n_bytes, n_bytes


def _train(argv: list[str], run_dir: pathlib.Path) -> float:
    """Trains in a fresh process; returns its wall time."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "jaxllm.train", *argv, f"--run_dir={run_dir}"]
    print(" ".join(command), flush=True)
    t0 = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            if not line.startswith("step "):  # the plan, evaluations and the outcome; not every progress line
                print("  " + line.rstrip(), flush=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed with status {proc.returncode}")
    return time.perf_counter() - t0


def _records(run_dir: pathlib.Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")


def bench_budget(budget: str, fixed: str, root: pathlib.Path, extra: list[str]) -> dict:
    budget_s = parse_duration(budget, "--budget")
    if fixed != "none":
        load_experiment(fixed)  # refused now, not after the budgeted run
    runs = [("budgeted", ["--experiment=base", f"--train.budget={budget}", *extra])]
    if fixed != "none":
        runs.append(("fixed", [f"--experiment={fixed}", *extra]))
    rows = []
    for name, argv in runs:
        run_dir = root / name
        wall = _train(argv, run_dir)
        records = _records(run_dir)
        evals = [r for r in records if "val_loss" in r and "time_s" in r]
        within = [r for r in evals if r["time_s"] <= budget_s]
        plan = next((r for r in records if r.get("plan_vs_achieved")), None)
        prepared = prepare(load_run(run_dir).saved, progress=False)
        docs = held_out_documents(prepared.val_tokens, prepared.tokenizer.bos)
        texts = [prepared.tokenizer.decode(doc[1:].tolist()).encode("utf-8") for doc in docs]
        bpb, n_bytes = model_bpb(run_dir, docs)
        config = json.loads((run_dir / "config.json").read_text())
        rows.append(
            {
                "run": name,
                "command": "python -m jaxllm.train " + " ".join(argv),
                "shape": f"{config['model']['n_layer']} x {config['model']['n_embd']}",
                "vocab": config["model"]["vocab_size"],
                "steps": plan["achieved_steps"] if plan else config["train"]["steps"],  # a steered run's own
                "wall_s": wall,
                "final_eval_s": evals[-1]["time_s"],
                "val_bpb": evals[-1]["val_bpb"],
                "val_bpb_within_budget": within[-1]["val_bpb"] if within else None,
                "plan": plan,
                "documents": len(docs),
                "document_bytes": n_bytes,
                "document_bpb": bpb,
                "compressors_bpb": compressor_bpb(texts),
            }
        )
    return {"budget": budget, "budget_s": budget_s, "rows": rows}


def budget_table(result: dict) -> str:
    lines = [
        f"budget {result['budget']}, process start to final evaluation; each run a fresh process, one after the other",
        "",
        "| run | shape | vocab | steps | final eval at | val bits/byte (windows) | val bits/byte by the budget's end "
        "| held-out docs bits/byte | gzip -9 | bz2 -9 | xz -9e |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        within = f"{r['val_bpb_within_budget']:.4f}" if r["val_bpb_within_budget"] is not None else "-"
        c = r["compressors_bpb"]
        lines.append(
            f"| {r['run']} | {r['shape']} | {r['vocab']} | {r['steps']:,} | {r['final_eval_s']:.0f} s | "
            f"{r['val_bpb']:.4f} | {within} | {r['document_bpb']:.4f} | {c['gzip -9']:.4f} | {c['bz2 -9']:.4f} | "
            f"{c['xz -9e']:.4f} |"
        )
    for r in result["rows"]:
        if r["plan"]:
            p = r["plan"]
            law = ""
            if "law_val_loss_at_achieved_steps" in p:  # results before steered runs have no such figure
                law = (
                    f", by the law for the {p['achieved_steps']:,} steps run {p['law_val_loss_at_achieved_steps']:.4f}"
                    f" ({100 * (p['achieved_val_loss'] / p['law_val_loss_at_achieved_steps'] - 1):+.1f}%)"
                )
            lines.append(
                f"\nplan against outcome ({r['run']}): val_loss planned {p['planned_val_loss']:.4f}, achieved "
                f"{p['achieved_val_loss']:.4f} ({100 * (p['achieved_val_loss'] / p['planned_val_loss'] - 1):+.1f}%)"
                f"{law}; time planned {p['planned_s']:.0f} s, achieved {p['achieved_s']:.0f} s "
                f"({100 * (p['achieved_s'] / result['budget_s'] - 1):+.1f}% of the budget)"
            )
    return "\n".join(lines)
