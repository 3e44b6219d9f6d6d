"""The cleaning pipeline over a stream of documents: clean on an engine, dedup the whole corpus, report.

Two passes. First, documents are cut into chunks (about 1 MB) and an engine maps Cleaner.clean_chunk over them:
the local one (LocalPool) `workers` processes with at most IN_FLIGHT chunks per worker in flight, kept for the whole
preparation, the Ray one (engine_ray.py) actors of a Ray cluster. The engine is the only part that differs: each
worker packs its chunk's results (its report, exact keys, MinHash signatures and cleaned documents) as a unit of
the work directory (units.Units), which the parent, taking them in input order, publishes, so a rerun after a crash
cleans only the chunks not yet published.
Once the corpus is through, the dedup driver (dedup.DedupIndex: 17 bytes of memory per document, at most about 58
while deciding) reads the keys and signatures back and decides which document of each group to keep (the lowest
input index), its LSH band tasks mapped on the same engine; the decision is published too, and the second pass
reads the chunks back in order and yields the kept documents. Memory stays bounded whatever the corpus size, and
the output and the report depend on the input order alone, not on the engine, its number of workers or where a
crash interrupted an earlier run. Local workers are spawned, not forked: the caller may already have started JAX,
whose threads do not survive a fork.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator

from jaxllm.cli import Stopped
from jaxllm.config.clean import CleanConfig
from jaxllm.data.clean import Cleaned, Cleaner
from jaxllm.data.components import Components
from jaxllm.data.dedup import DedupIndex, Verdicts
from jaxllm.data.report import Report
from jaxllm.data.sources import Document, SourceStats
from jaxllm.data.units import Units, map_units, pack, unit_name

CHUNK_DOCS = 256
CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 5.0
# Chunks in flight per worker. Results are taken in input order, so while the oldest chunk runs long the other
# workers can only go on with the chunks already handed out: a deeper window idles them less.
IN_FLIGHT = 4

CleanedChunk = tuple[list[Cleaned], Report]
# An engine: (chunks, make) -> make()(chunk) for each chunk, in input order, wherever it runs. make is picklable
# and runs once per worker, to build what every chunk needs (a Cleaner, a tokenizer).
Engine = Callable[[Iterable[Any], Callable[[], Callable[[Any], Any]]], Iterator[Any]]


def chunked(items: Iterable[Any], size: Callable[[Any], int], max_items: int, max_size: int) -> Iterator[list]:
    """Consecutive items in lists of at most max_items, each closed once its sizes reach max_size: chunks of about
    equal work, since an engine returns results in input order and one far larger chunk would idle the other
    workers while it finishes."""
    chunk, total = [], 0
    for item in items:
        chunk.append(item)
        total += size(item)
        if len(chunk) >= max_items or total >= max_size:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk


def _text_size(doc: Document) -> int:
    return len(doc.text)


# What a local worker made last: the pickled `make` it came from and the function (a worker serves every map of a
# preparation, so it rebuilds only when a map brings another `make`).
_made: dict[str, Any] = {"from": None, "fn": None}


def _run_in_worker(make: bytes, chunk: Any) -> Any:
    if _made["from"] != make:
        _made.update({"from": make, "fn": pickle.loads(make)()})
    return _made["fn"](chunk)


class LocalPool:
    """The local engine (its `map` is an Engine): make()(chunk) over chunks in `workers` spawned processes, at most
    IN_FLIGHT chunks per worker in flight, results in input order. The processes start at the first map with more than
    one chunk (for one worker or one chunk the work runs in this process: starting a spawned worker costs seconds,
    more than a chunk's work) and serve every later map until close(), so cleaning and both splits' tokenising pay
    for starting them once. A worker that dies ends the map with jaxllm.cli.Stopped instead of waiting for it."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def map(self, chunks: Iterable[Any], make: Callable[[], Callable[[Any], Any]]) -> Iterator[Any]:
        chunks = iter(chunks)
        first = list(itertools.islice(chunks, 2))
        chunks = itertools.chain(first, chunks)
        if self.workers <= 1 or len(first) < 2:
            yield from map(make(), chunks)
            return
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        task, pending = functools.partial(_run_in_worker, pickle.dumps(make)), collections.deque()
        try:
            for chunk in chunks:
                pending.append(self._executor.submit(task, chunk))
                if len(pending) >= IN_FLIGHT * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except concurrent.futures.BrokenExecutor:  # from a result, or from a submit once the pool knows
            raise Stopped(
                "error: data preparation stopped: a worker process of the local engine died (killed, or out of "
                "memory: fewer --data.workers use less); rerun the same command to resume from the chunks already "
                "finished",
                1,
            ) from None
        finally:
            for future in pending:  # a consumer that stopped early leaves no queued chunk to the next map
                future.cancel()

    def close(self) -> None:
        """Ends the workers (after their current chunks, which nobody waits for any more)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


@contextlib.contextmanager
def local_engine(workers: int) -> Iterator[Engine]:
    """The local engine with `workers` processes for everything mapped while inside; they end on leaving."""
    pool = LocalPool(workers)
    try:
        yield pool.map
    finally:
        pool.close()


def chunk_cleaner(cfg: CleanConfig) -> Callable[[list[Document]], CleanedChunk]:
    return Cleaner(cfg).clean_chunk


def _chunk_objects(result: CleanedChunk) -> tuple:
    """A cleaned chunk's unit: what dedup reads (report, exact keys, signatures), then the cleaned documents."""
    cleaned, report = result
    dedup_input = (report, [c.exact_key for c in cleaned], [c.signature for c in cleaned])
    return dedup_input, [(c.doc, c.n_bytes) for c in cleaned]


def _clean_chunks(
    docs: Iterable[Document], cfg: CleanConfig, engine: Engine, units: Units, progress: bool
) -> tuple[int, int]:
    """First pass: each chunk of documents not yet published is cleaned on the engine and published as unit
    chunk-<i>: (its report, exact keys, signatures), then its cleaned (document, bytes) pairs. Returns the number
    of chunks and how many of them an earlier run had published."""
    start = last_print = time.perf_counter()
    seen = [0]

    def say_progress(chunk: list[Document]) -> None:
        nonlocal last_print
        seen[0] += len(chunk)
        now = time.perf_counter()
        if progress and now - last_print >= PROGRESS_EVERY_S:
            last_print = now
            rate = seen[0] / (now - start)
            print(f"[data] cleaning: {seen[0]:,} documents, {rate:,.0f} docs/s", file=sys.stderr, flush=True)

    chunks = chunked(docs, _text_size, CHUNK_DOCS, CHUNK_BYTES)
    make = functools.partial(chunk_cleaner, cfg)
    return map_units(units, "chunk", chunks, engine, make, _chunk_objects, say_progress)


def _decide(
    units: Units, chunks: int, cfg: CleanConfig, report: Report, engine: Engine, components: Components
) -> Verdicts:
    """Merges the chunks' reports into report and returns dedup's decision over the whole corpus, its band tasks
    on the engine, published as the unit 'dedup' (a rerun that finds it reads it back). The signatures' temporary
    file goes to the work directory, where the engine's workers read it."""
    decided = units.done("dedup")
    index = None if decided else DedupIndex(cfg.dedup, units.directory, components, engine)
    try:
        for i in range(chunks):
            chunk_report, keys, signatures = next(units.load(unit_name("chunk", i)))
            report.merge(chunk_report)
            if index is not None:
                index.add(keys, signatures)
        if decided:
            return next(units.load("dedup"))
        verdicts = index.verdicts(report.max_examples)
    finally:
        if index is not None:
            index.close()
    units.publish("dedup", pack(verdicts))
    return verdicts


def _cleaned(units: Units, chunks: int) -> Iterator[tuple[Document, int]]:
    for i in range(chunks):
        objects = units.load(unit_name("chunk", i))
        next(objects)  # the dedup input
        yield from next(objects)


def _dedup_pass(cleaned: Iterable[tuple[Document, int]], verdicts: Verdicts, report: Report) -> Iterator[Document]:
    """Second pass: the kept documents in input order, each removed one counted in report, its cluster statistics
    set. Ids are kept only of the documents the report names (the first examples of each stage and what they
    duplicate, the example clusters); a kept document always comes before those removed for resembling it."""
    largest = verdicts.clusters["largest"]
    named = {
        int(verdicts.kept_as[i]) for exact in (True, False) for i in verdicts.first_removed(exact, report.max_examples)
    }
    named.update(i for c in largest for i in [c["kept"], *c["members"]])
    ids = {}
    for i, (doc, n_bytes) in enumerate(cleaned):
        if i in named:
            ids[i] = doc.id
        kept_as = int(verdicts.kept_as[i])
        note = f" (of {ids[kept_as]})" if kept_as in ids else ""
        if verdicts.exact[i]:
            report.removed("exact_dedup", "duplicate", doc.id, doc.text, n_bytes, note)
            continue
        report.passed("exact_dedup", n_bytes, n_bytes)
        if kept_as != i:
            report.removed("near_dedup", "duplicate", doc.id, doc.text, n_bytes, note)
            continue
        report.passed("near_dedup", n_bytes, n_bytes)
        yield doc
    report.near_clusters = verdicts.clusters | {
        "largest": [c | {"kept": ids[c["kept"]], "members": [ids[i] for i in c["members"]]} for c in largest]
    }


def iter_clean(
    docs: Iterable[Document],
    cfg: CleanConfig,
    workers: int,
    report: Report,
    progress: bool = True,
    work_dir: str | os.PathLike | None = None,
    engine: Engine | None = None,
    components: Components = Components(),
) -> Iterator[Document]:
    """Cleaned, deduplicated documents in input order, once the whole input is cleaned (the first pass runs at
    the first `next`); `report` is complete once the iterator is exhausted. Each cleaned chunk and dedup's decision
    are published in work_dir (units.Units), so a rerun over the same input and work_dir after a crash cleans only
    the chunks not yet published; None: a temporary directory, gone on return. engine None is a local one with
    `workers` processes, for cleaning and dedup's band tasks, ended on return; another engine says how many
    workers it has. `components` says where dedup's clusters are formed."""
    report.workers = max(workers, 1)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(local_engine(workers))
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cleaned-"))
        units = Units(work_dir)
        chunks, resumed = _clean_chunks(docs, cfg, engine, units, progress)
        if progress:
            done_before = f" ({resumed} of {chunks} chunks cleaned by an earlier run)" if resumed else ""
            print(f"[data] dedup over {chunks:,} cleaned chunks{done_before}", file=sys.stderr, flush=True)
        verdicts = _decide(units, chunks, cfg, report, engine, components)
        yield from _dedup_pass(_cleaned(units, chunks), verdicts, report)
    report.seconds = time.perf_counter() - start


def clean_corpus(
    docs: Iterable[Document],
    cfg: CleanConfig,
    workers: int,
    progress: bool = True,
    source_stats: SourceStats | None = None,
    work_dir: str | os.PathLike | None = None,
    engine: Engine | None = None,
    components: Components = Components(),
) -> tuple[list[Document], Report]:
    """All cleaned documents and the finished report (pass the sources' stats to have them in the report).

    With cfg.enabled false the documents come back unchanged and the report counts nothing.
    """
    report = Report(cfg.examples)
    kept = (
        list(iter_clean(docs, cfg, workers, report, progress, work_dir, engine, components))
        if cfg.enabled
        else list(docs)
    )
    if source_stats is not None:
        report.sources = {
            "files_read": source_stats.files_read,
            "files_skipped": source_stats.files_skipped,
            "skipped_examples": list(source_stats.skipped_examples),
        }
    return kept, report
