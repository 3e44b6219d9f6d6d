"""The Ray engine (data.engine=ray): a per-chunk function (cleaning, tokenising) over chunks on the actors of a Ray
cluster, results in input order.

Only the map differs from the local engine (pipeline.LocalPool): chunking, the dedup decision, the merging of
reports and the writing of shards are the same driver code, so both engines prepare byte-identical data. The driver
streams chunks round-robin to `workers` actors (one CPU each, the function built once per actor), at most
pipeline.IN_FLIGHT chunks per actor in flight, so memory stays bounded whatever the corpus size. The actors of a
call stay for the next calls whatever their function (cleaning, dedup's band tasks, the rounds of
components.star_components, the two splits' tokenising): each call puts its pickled function in the object store
once and an actor rebuilds only when a call brings another, since starting actors costs seconds; they go when a call
fails or the cluster is left. Dedup's band tasks map the driver's signature file (dedup.py): a cluster of several
machines needs its folder mounted at the same path on each. Not a Ray Data dataset: that would need the whole input
materialised in the driver or the sources rewritten as datasources; ray[data] is pinned for that next step.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
from typing import Any, Callable, Iterable, Iterator

import ray
from ray import cloudpickle

from jaxllm.cli import Stopped
from jaxllm.data.pipeline import IN_FLIGHT


@ray.remote(num_cpus=1)
class _Worker:
    def __init__(self):
        self.made_from, self.fn = None, None

    def run(self, make: bytes, chunk: Any) -> Any:
        if make != self.made_from:
            self.made_from, self.fn = make, cloudpickle.loads(make)()
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
        _release_actors()
        if started:
            ray.shutdown()


_kept: dict[str, Any] = {"actors": []}  # the last call's actors


def _release_actors() -> None:
    for actor in _kept["actors"]:
        ray.kill(actor)
    _kept.update(actors=[])


def _actors(workers: int) -> list:
    if len(_kept["actors"]) != workers:
        _release_actors()  # an actor holds a CPU: new ones would wait for the old ones forever
        _kept.update(actors=[_Worker.remote() for _ in range(workers)])
    return _kept["actors"]


def map_on_ray(chunks: Iterable[Any], make: Callable[[], Callable[[Any], Any]], workers: int) -> Iterator[Any]:
    actors, finished = _actors(max(workers, 1)), False
    made = ray.put(cloudpickle.dumps(make))
    try:
        pending = collections.deque()
        # Each actor runs its calls in submission order, so taking results from the front keeps input order.
        for actor, chunk in zip(itertools.cycle(actors), chunks):
            pending.append(actor.run.remote(made, chunk))
            if len(pending) >= IN_FLIGHT * len(actors):
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())
        finished = True
    except ray.exceptions.RayActorError:  # its process killed (the out-of-memory killer, a person) or its node lost
        raise Stopped(
            "error: data preparation stopped: an actor of the Ray engine died (killed, out of memory, or its node "
            "lost: fewer --data.workers use less); rerun the same command to resume from the chunks already finished",
            1,
        ) from None
    finally:
        if not finished:  # calls may still be queued on the actors: none may reach the next call
            _release_actors()
