"""The Ray engine (data.engine=ray): Cleaner.clean_chunk over chunks of documents on the actors of a Ray cluster,
results in input order.

Only the map differs from the local engine (pipeline.clean_locally): chunking, the dedup decision and the merging
of reports are the same driver code, so both engines prepare byte-identical data. The driver reads the sources and
streams chunks round-robin to `workers` actors (one CPU and one Cleaner each), at most two chunks per actor in
flight, so memory stays bounded whatever the corpus size. Not a Ray Data dataset: that would need the whole input
materialised in the driver or the sources rewritten as datasources; ray[data] is pinned for that next step.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
from typing import Iterable, Iterator

import ray

from jaxllm.config.clean import CleanConfig
from jaxllm.data.clean import Cleaner
from jaxllm.data.pipeline import CleanedChunk
from jaxllm.data.sources import Document


@ray.remote(num_cpus=1)
class _CleanerActor:
    def __init__(self, cfg: CleanConfig):
        self.cleaner = Cleaner(cfg)

    def clean_chunk(self, chunk: list[Document]) -> CleanedChunk:
        return self.cleaner.clean_chunk(chunk)


@contextlib.contextmanager
def cluster(address: str) -> Iterator[int]:
    """The cluster's CPUs while inside: a local cluster started for this (address ''), shut down on leaving, or
    the one at `address` ('auto': the one `ray start` made on this machine). A process already connected (tests)
    keeps its cluster."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield int(ray.cluster_resources().get("CPU", 0))
    finally:
        if started:
            ray.shutdown()


def clean_on_ray(chunks: Iterable[list[Document]], cfg: CleanConfig, workers: int) -> Iterator[CleanedChunk]:
    actors = [_CleanerActor.remote(cfg) for _ in range(max(workers, 1))]
    try:
        pending = collections.deque()
        # Each actor runs its calls in submission order, so taking results from the front keeps input order.
        for actor, chunk in zip(itertools.cycle(actors), chunks):
            pending.append(actor.clean_chunk.remote(chunk))
            if len(pending) >= 2 * len(actors):
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())
    finally:
        for actor in actors:
            ray.kill(actor)
