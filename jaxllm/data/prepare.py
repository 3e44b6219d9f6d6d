"""Preparation: sources -> clean and dedup (report.json, report.png) -> train/val split -> tokenizer -> token
shards, cached by content, resumable after a crash.

The prepared directory is `data.cache_dir/<key>`, where the key hashes every setting that shapes the result, a
fingerprint of the inputs (sizes and modification times) and the preparing code itself, so changed inputs,
settings or code prepare anew and unchanged ones are reused. The work is a sequence of units published whole in
`data.cache_dir/.<key>.work` (units.Units): each cleaned chunk, dedup's decision over the corpus, the tokenizer
trained on its sample, each tokenised chunk. A rerun after a crash (kill -9 included) redoes only the units not
yet published and gives the same bytes as an uninterrupted run; the split is recomputed, being a hash of each
document's id. The prepared files are then written from the units into a local folder, manifest.json last, and
published (jaxllm.storage.publish_directory: renamed into place locally; on gs:// every file uploaded, then
manifest.json, the commit marker a reader waits for), and the units deleted: a reader never sees a partial
preparation, and a second process finding the manifest reuses it. Training reads a gs:// preparation from this
machine's checked copy (mirror.py). The engine that
cleans and tokenises (data.engine: local or Ray) changes where the work runs, never the bytes: it is not part of
the key or the manifest, and a run on one engine resumes another's units.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Callable, Iterator

import numpy as np

from jaxllm import storage
from jaxllm import tokenizer as tok
from jaxllm.config import Config, ConfigError, DataConfig
from jaxllm.data import mirror, shards
from jaxllm.data.components import Components
from jaxllm.data.pipeline import Engine, chunked, clean_corpus, local_engine
from jaxllm.data.report import Report
from jaxllm.data.sources import Document, SourceStats, check_sources, input_paths, iter_documents, stdlib_root
from jaxllm.data.units import Units, map_units, pack, unit_name


@functools.cache
def code_version() -> str:
    """Hash of the code that shapes prepared data (this package and the tokenizer): a change to a filter or to
    the shard layout must not reuse data prepared by the old code."""
    package = pathlib.Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")) + [package.parent / "tokenizer.py"]:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class Prepared:
    dir: pathlib.Path
    tokenizer: tok.Tokenizer
    train_tokens: np.ndarray  # memmap
    val_tokens: np.ndarray  # memmap
    manifest: dict


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_validation(doc_id: str, val_fraction: float) -> bool:
    """Stable split: a document is held out when the hash of its id falls below val_fraction."""
    return int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:8], 16) / 2**32 < val_fraction


def _split(docs, val_fraction: float):
    """(document, held out?) pairs. A file: source is one long text (e.g. Tiny Shakespeare), so it gets the usual
    split by position: its last val_fraction of characters is held out as the document `<id>#tail`. Every other
    document goes whole to the side its id hashes to."""
    for doc in docs:
        if doc.origin.startswith("file:"):
            cut = int(len(doc.text) * (1 - val_fraction))
            yield dataclasses.replace(doc, text=doc.text[:cut]), False
            yield dataclasses.replace(doc, id=doc.id + "#tail", text=doc.text[cut:]), True
        else:
            yield doc, is_validation(doc.id, val_fraction)


def _size_and_time(path: pathlib.Path) -> tuple[int | None, int | None]:
    """One stat call: a source lists tens of thousands of files (site-packages), checked on every preparation."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    return st.st_size, st.st_mtime_ns


def _input_fingerprint(sources: tuple[str, ...]) -> list:
    """Cheap evidence that the inputs are unchanged: the interpreter for the stdlib, path, size and modification
    time of every local file a source reads."""
    out = []
    for source in sources:
        files = [[str(path), *_size_and_time(path)] for path in input_paths(source)]
        out.append([source, sys.version, str(stdlib_root())] if source.startswith("stdlib") else [source, files])
    return out


# A tokenising chunk: this many documents or, sooner, texts of this many characters (chunks of about equal work)
ENCODE_DOCS = 256
ENCODE_CHARS = 1 << 20
# how the data is prepared, not what it is
ENGINE_SETTINGS = ("engine", "ray_address", "workers", "union_find_max_pairs")


def _data_settings(data: DataConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(data).items() if k not in ENGINE_SETTINGS}


def cache_key(cfg: Config) -> str:
    settings = {
        "code": code_version(),
        "data": _data_settings(cfg.data) | {"cache_dir": None},
        "vocab_size": cfg.model.vocab_size,
        "inputs": _input_fingerprint(cfg.data.sources),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[data] {message}", flush=True)


def _ray_engine_module():
    try:
        from jaxllm.data import engine_ray  # noqa: PLC0415 (Ray is an optional extra)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "ray":
            raise
        raise ConfigError("data.engine=ray needs Ray, which is not installed: pip install -e '.[ray]'") from None
    return engine_ray


@contextlib.contextmanager
def _engine(data: DataConfig, progress: bool) -> Iterator[tuple[Engine, int]]:
    """The engine the settings name and its number of workers, while inside."""
    if data.engine == "local":
        workers = data.workers or os.cpu_count() or 1
        with local_engine(workers) as engine:  # one pool for cleaning and tokenising
            yield engine, workers
        return
    engine_ray = _ray_engine_module()
    with engine_ray.cluster(data.ray_address) as cpus:
        workers = min(data.workers or cpus, cpus)  # an actor takes a CPU: more would wait forever
        _say(progress, f"cleaning on Ray: {workers} actors on a cluster of {cpus} CPUs")
        yield functools.partial(engine_ray.map_on_ray, workers=workers), workers


def chunk_encoder(name: str, model: bytes) -> Callable[[list[str]], list[np.ndarray]]:
    """encode_batch of the tokenizer file `name` holding `model`, rebuilt from those bytes in each worker (a Ray
    worker may be on a machine without this disk); ids come back as int32 arrays, cheaper to send than lists."""
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / name
        path.write_bytes(model)
        tokenizer = tok.load(path)
    return lambda texts: [np.asarray(ids, np.int32) for ids in tokenizer.encode_batch(texts)]


def _components(data: DataConfig, engine: Engine, workers: int) -> Components:
    """Near dedup's cluster rounds, when there are too many pairs for union-find: on the Ray actors, or in this
    process on the local engine (a pool of spawned workers would cost seconds a round)."""
    if data.engine == "ray":
        return Components(engine, workers, data.union_find_max_pairs)
    return Components(None, 1, data.union_find_max_pairs)


def _collect(
    cfg: Config, work: pathlib.Path, progress: bool, engine: Engine, workers: int
) -> tuple[list[Document], list[Document], dict, Report]:
    """The cleaned documents split into train and held-out, the summary for the manifest, the cleaning report."""
    stats = SourceStats()
    docs, report = clean_corpus(
        iter_documents(cfg.data.sources, stats),
        cfg.data.clean,
        workers,
        progress,
        source_stats=stats,
        work_dir=work / "clean",
        engine=engine,
        components=_components(cfg.data, engine, workers),
    )
    if progress:
        report.print_table()
    train, val, records = [], [], []
    for doc, held_out in _split(docs, cfg.data.val_fraction):
        (val if held_out else train).append(doc)
        records.append(
            {
                "id": doc.id,
                "sha256": _sha(doc.text),
                "bytes": len(doc.text.encode("utf-8")),
                "split": "val" if held_out else "train",
            }
        )
    if not train or not val:
        raise ConfigError(
            f"data sources {list(cfg.data.sources)} gave {len(train)} training and {len(val)} held-out "
            f"documents; both splits need at least one (add documents or change data.val_fraction)"
        )
    summary = {
        "files_read": stats.files_read,
        "files_skipped": stats.files_skipped,
        "skipped_examples": stats.skipped_examples,
        "cleaning_report": "report.json",
        "documents": records,
    }
    _say(
        progress,
        f"{stats.files_read} files read, {stats.files_skipped} skipped (undecodable or unreadable), "
        f"cleaning kept {len(docs)} documents: {len(train)} train / {len(val)} held-out",
    )
    return train, val, summary, report


def _tokenizer_lines(docs: list[Document], budget_bytes: int):
    """Lines from documents spread evenly over the training split, up to about budget_bytes."""
    total = sum(len(d.text) for d in docs)
    stride = max(1, round(total / max(budget_bytes, 1)))
    used = 0
    for doc in docs[::stride]:
        for line in doc.text.split("\n"):
            yield line
        used += len(doc.text)
        if used >= budget_bytes:
            return


def _train_tokenizer(cfg: Config, train: list[Document], val: list[Document], out: pathlib.Path) -> tok.Tokenizer:
    if cfg.data.tokenizer == "char":
        tokenizer = tok.train_char((d.text for d in train + val), out / "tokenizer.json")
        if tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(
                f"the corpus has {tokenizer.vocab_size} distinct characters and specials but "
                f"model.vocab_size={cfg.model.vocab_size}; set --model.vocab_size={tokenizer.vocab_size}"
            )
        return tokenizer
    return tok.train_bpe(
        _tokenizer_lines(train, cfg.data.tokenizer_train_bytes), cfg.model.vocab_size, out / "tokenizer.model"
    )


def _tokenizer(cfg: Config, train: list[Document], val: list[Document], units: Units, out: pathlib.Path):
    """The tokenizer in `out`: trained and published as the unit 'tokenizer' (file name, bytes) the first time,
    read back from it by a rerun after a crash."""
    if not units.done("tokenizer"):
        with tempfile.TemporaryDirectory(dir=units.directory) as directory:
            trained = _train_tokenizer(cfg, train, val, pathlib.Path(directory))
            units.publish("tokenizer", pack(trained.path.name, trained.path.read_bytes()))
    name, model = units.load("tokenizer")
    (out / name).write_bytes(model)
    return tok.load(out / name)


def _encode_split(
    name: str, docs: list[Document], tokenizer: tok.Tokenizer, units: Units, out: pathlib.Path, engine: Engine
) -> tuple[dict, int]:
    """Tokenises the split on the engine in chunks (ENCODE_DOCS, ENCODE_CHARS), each published as a unit (those an
    earlier run published are not redone), then writes the split's shard from them in input order; returns its
    index and how many chunks an earlier run had published."""
    encoder = functools.partial(chunk_encoder, tokenizer.path.name, tokenizer.path.read_bytes())
    texts = chunked((d.text for d in docs), len, ENCODE_DOCS, ENCODE_CHARS)
    chunks, resumed = map_units(units, name, texts, engine, encoder)
    encoded = itertools.chain.from_iterable(next(units.load(unit_name(name, i))) for i in range(chunks))
    n_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    index = shards.write_split(out, name, encoded, n_bytes, tokenizer.vocab_size, tokenizer.bos)
    index["sha256"] = storage.file_sha256(out / f"{name}.bin")
    return index, resumed


def _build(cfg: Config, work: pathlib.Path, out: pathlib.Path, progress: bool) -> dict:
    with _engine(cfg.data, progress) as (engine, workers):
        return _build_on(cfg, work, out, progress, engine, workers)


def _build_on(cfg: Config, work: pathlib.Path, out: pathlib.Path, progress: bool, engine: Engine, workers: int) -> dict:
    """Builds the prepared files in `out` from the units of `work`, running the units not yet published."""
    t0 = time.perf_counter()
    train, val, summary, report = _collect(cfg, work, progress, engine, workers)
    t1 = time.perf_counter()
    units = Units(work / "tokenize")
    tokenizer = _tokenizer(cfg, train, val, units, out)
    t2 = time.perf_counter()
    _say(progress, f"tokenizer ({cfg.data.tokenizer}, {tokenizer.vocab_size} tokens) ready in {t2 - t1:.1f}s")
    splits = {}
    # The report is drawn while the splits are tokenised, when the driver mostly waits on the engine's workers, not
    # beside tokenizer training, which holds the interpreter lock and would only be slowed by it.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="report") as drawer:
        report_written = drawer.submit(report.write, out)
        for name, docs in (("train", train), ("val", val)):
            splits[name], resumed = _encode_split(name, docs, tokenizer, units, out, engine)
            if resumed:
                _say(progress, f"{name}: {resumed} tokenised chunks were published by an earlier run")
        report_written.result()
    t3 = time.perf_counter()
    for name, index in splits.items():
        _say(
            progress,
            f"{name}: {index['documents']} documents, {index['tokens']:,} tokens, {index['bytes']:,} bytes "
            f"({index['bytes'] / index['tokens']:.2f} bytes/token)",
        )
    return {
        "code_version": code_version(),
        "data": _data_settings(cfg.data),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_file": tokenizer.path.name,
        "tokenizer_sha256": storage.file_sha256(tokenizer.path),
        "splits": splits,
        "sources": summary,
        "seconds": {"read": t1 - t0, "tokenizer": t2 - t1, "encode": t3 - t2},
    }


def load_prepared(directory: pathlib.Path) -> Prepared:
    manifest = json.loads((directory / mirror.MANIFEST).read_text())
    tokenizer = tok.load(directory / manifest["tokenizer_file"])
    train_tokens, _ = shards.read_split(directory, "train")
    val_tokens, _ = shards.read_split(directory, "val")
    return Prepared(directory, tokenizer, train_tokens, val_tokens, manifest)


def prepare(cfg: Config, progress: bool = True) -> Prepared:
    """The prepared data for this config: reused when present and complete (from gs://, through this machine's
    copy), built otherwise."""
    if cfg.data.tokenizer == "hf":
        raise ConfigError(
            "data.tokenizer=hf is an imported checkpoint's tokenizer.json, which jaxllm cannot train or prepare data "
            "with: post-train the imported run (sft, dpo, rl) with --posttrain.text_mix=0, or pretrain a bpe run"
        )
    check_sources(cfg.data.sources)
    if cfg.data.engine == "ray":
        _ray_engine_module()  # a missing extra fails before any work
    final = storage.path(cfg.data.cache_dir) / cache_key(cfg)
    remote = storage.is_remote(final)
    local = mirror.local_copy(final)  # final itself, or this machine's copy of a gs:// one
    if mirror.is_complete(local):
        return load_prepared(local)
    if remote and mirror.is_complete(final):
        return load_prepared(mirror.fetch(final, local))
    storage.check_writable(cfg.data.cache_dir, "--data.cache_dir")
    _say(progress, f"preparing {list(cfg.data.sources)} into {final}")
    work = final.parent / f".{final.name}.work"  # the units, kept by a crash for the rerun to resume from
    scratch = local.parent / f".{local.name}.work"  # a local folder: `work` itself unless that is on gs://
    out = scratch / f"prepared-{os.getpid()}"  # the files of `final`, published when complete
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        manifest = _build(cfg, work, out, progress)
        (out / mirror.MANIFEST).write_text(json.dumps(manifest, indent=1))
        if remote:
            storage.publish_directory(out, final, mirror.MANIFEST)
        storage.publish_directory(out, local, mirror.MANIFEST)
    except storage.StorageError:  # unreachable storage: the units wait for the rerun
        raise
    except ConfigError:  # bad input fails the same way on every rerun: its units would never be resumed
        storage.remove_tree(work)
        raise
    except OSError:  # another process (a second host on shared storage) finished the same data first
        if not (mirror.is_complete(local) or mirror.is_complete(final)):
            raise
    finally:
        shutil.rmtree(out, ignore_errors=True)
    storage.remove_tree(work)
    shutil.rmtree(scratch, ignore_errors=True)
    return load_prepared(local if mirror.is_complete(local) else mirror.fetch(final, local))
