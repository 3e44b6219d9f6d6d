"""The cleaning pipeline over a stream of documents: clean in worker processes, dedup in order, report.

Documents are cut into chunks (about 1 MB) and cleaned by a pool of `workers` processes, with at most two chunks
per worker in flight, so memory stays bounded whatever the corpus size (apart from the dedup indexes, see
dedup.py). Results are consumed in input order, and dedup keeps the first of each group in that order, so the
output and the report are the same for any number of workers. Workers are spawned, not forked: the caller may
already have started JAX, whose threads do not survive a fork.
"""

from __future__ import annotations

import collections
import multiprocessing
import sys
import time
from typing import Iterable, Iterator

from jaxllm.config.clean import CleanConfig
from jaxllm.data.clean import Cleaned, Cleaner
from jaxllm.data.dedup import FirstSeen
from jaxllm.data.report import Report
from jaxllm.data.sources import Document, SourceStats

CHUNK_DOCS = 256
CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 5.0


def _chunks(docs: Iterable[Document]) -> Iterator[list[Document]]:
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc.text)
        if len(chunk) >= CHUNK_DOCS or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_worker_cleaner: Cleaner | None = None


def _init_worker(cfg: CleanConfig) -> None:
    global _worker_cleaner
    _worker_cleaner = Cleaner(cfg)


def _clean_in_worker(chunk: list[Document]) -> tuple[list[Cleaned], Report]:
    return _worker_cleaner.clean_chunk(chunk)


def _cleaned_chunks(docs: Iterable[Document], cfg: CleanConfig, workers: int) -> Iterator[tuple[list[Cleaned], Report]]:
    if workers <= 1:
        cleaner = Cleaner(cfg)
        yield from map(cleaner.clean_chunk, _chunks(docs))
        return
    # Leaving the `with` (end, error, or the consumer dropping this generator) terminates the workers.
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (cfg,)) as pool:
        pending = collections.deque()
        for chunk in _chunks(docs):
            pending.append(pool.apply_async(_clean_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def iter_clean(
    docs: Iterable[Document], cfg: CleanConfig, workers: int, report: Report, progress: bool = True
) -> Iterator[Document]:
    """Cleaned, deduplicated documents in input order; `report` is complete once the iterator is exhausted."""
    report.workers = max(workers, 1)
    exact, near = FirstSeen(), FirstSeen()
    start = last_print = time.perf_counter()
    for cleaned, chunk_report in _cleaned_chunks(docs, cfg, workers):
        report.merge(chunk_report)
        for c in cleaned:
            # exact first: an exact copy is reported as such, not as a near duplicate
            for stage, index, keys in (
                ("exact_dedup", exact, (c.exact_key,) if cfg.dedup.exact else ()),
                ("near_dedup", near, c.band_keys),
            ):
                earlier = index.check_and_add(c.doc.id, keys)
                if earlier is not None:
                    report.removed(stage, "duplicate", c.doc.id, c.doc.text, c.n_bytes, f" (of {earlier})")
                    break
                report.passed(stage, c.n_bytes, c.n_bytes)
            else:
                yield c.doc
        now = time.perf_counter()
        if progress and now - last_print >= PROGRESS_EVERY_S:
            last_print = now
            seen = report.stages["normalize"].docs_in
            print(
                f"[data] cleaning: {seen:,} documents, {seen / (now - start):,.0f} docs/s, "
                f"{report.stages['near_dedup'].docs_out:,} kept",
                file=sys.stderr,
                flush=True,
            )
    report.seconds = time.perf_counter() - start


def clean_corpus(
    docs: Iterable[Document],
    cfg: CleanConfig,
    workers: int,
    progress: bool = True,
    source_stats: SourceStats | None = None,
) -> tuple[list[Document], Report]:
    """All cleaned documents and the finished report (pass the sources' stats to have them in the report).

    With cfg.enabled false the documents come back unchanged and the report counts nothing.
    """
    report = Report(cfg.examples)
    kept = list(iter_clean(docs, cfg, workers, report, progress)) if cfg.enabled else list(docs)
    if source_stats is not None:
        report.sources = {
            "files_read": source_stats.files_read,
            "files_skipped": source_stats.files_skipped,
            "skipped_examples": list(source_stats.skipped_examples),
        }
    return kept, report
