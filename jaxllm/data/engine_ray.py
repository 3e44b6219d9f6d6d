"""The Ray engine (data.engine=ray): a per-chunk function (cleaning, tokenising) over chunks on the actors of a Ray
cluster, results in input order.

Only the map differs from the local engine (pipeline.map_locally): chunking, the dedup decision, the merging of
reports and the writing of shards are the same driver code, so both engines prepare byte-identical data. The
driver streams chunks round-robin to `workers` actors (one CPU each, the function built once per actor), at most
two chunks per actor in flight, so memory stays bounded whatever the corpus size. Not a Ray Data dataset: that
would need the whole input materialised in the driver or the sources rewritten as datasources; ray[data] is
pinned for that next step.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
from typing import Any, Callable, Iterable, Iterator

import ray


@ray.remote(num_cpus=1)
class _Worker:
    def __init__(self, make: Callable[[], Callable[[Any], Any]]):
        self.fn = make()

    def run(self, chunk: Any) -> Any:
        return self.fn(chunk)


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


def map_on_ray(chunks: Iterable[Any], make: Callable[[], Callable[[Any], Any]], workers: int) -> Iterator[Any]:
    actors = [_Worker.remote(make) for _ in range(max(workers, 1))]
    try:
        pending = collections.deque()
        # Each actor runs its calls in submission order, so taking results from the front keeps input order.
        for actor, chunk in zip(itertools.cycle(actors), chunks):
            pending.append(actor.run.remote(chunk))
            if len(pending) >= 2 * len(actors):
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())
    finally:
        for actor in actors:
            ray.kill(actor)
