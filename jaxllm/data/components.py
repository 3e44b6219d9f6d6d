"""Connected components of verified near-duplicate pairs on an engine, for pairs too many for union-find in the
driver (dedup.join_components): rounds of one pure function over partitions, which the local process pool or Ray
actors map. Both label each document with the lowest index of its component, so they form the same clusters and
keep the same documents.

The rounds alternate large-star and small-star (Kiveris et al., "Connected Components in MapReduce and Beyond",
SoCC 2014) rather than hash-to-min (Rastogi et al., ICDE 2013): hash-to-min's sets grow towards the whole
component at every node of a chain (a 1,000-document chain reached 1.26M rows in its 11th of 13 rounds, from
999 pairs), while a star round never emits more edges than it receives: at most 2 rows per verified pair, in
O(log^2 n) rounds (23 for that chain). Once an iteration changes no edge, each component is a star on its
lowest index. Edges are (node, neighbour) int64 rows partitioned by node % partitions; the driver routes one
round's edges to their partitions (16 B a row, 2 per distinct verified pair at most) and keeps the (n,) labels.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable, Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class Components:
    """Where dedup joins verified pairs into clusters: union-find in the driver up to union_find_max_pairs distinct
    pairs (None: always), star rounds beyond, over `partitions` partitions on `engine` (None: this process;
    else a pipeline.Engine)."""

    engine: Callable[..., Iterator[Any]] | None = None
    partitions: int = 1
    union_find_max_pairs: int | None = None


def star_round(rows: np.ndarray, partitions: int, large: bool) -> tuple[list[np.ndarray], np.ndarray, bytes]:
    """One large-star (or small-star) round over one partition's edges, as (node, neighbour) rows (any order,
    repeats allowed): the edges it emits, both ways, bucketed by their node's partition; its nodes' labels as
    (node, lowest of it and its neighbours) rows; and a digest of its edges, which repeats from one iteration to
    the next only when they did not change."""
    rows = np.unique(rows.reshape(-1, 2), axis=0)  # sorted by node, then neighbour: a node's first row has its min
    starts = np.flatnonzero(np.r_[True, rows[1:, 0] != rows[:-1, 0]]) if len(rows) else np.zeros(0, np.int64)
    nodes = rows[starts, 0]
    lowest = np.minimum(nodes, rows[starts, 1])
    node, neighbour = rows[:, 0], rows[:, 1]
    node_lowest = np.repeat(lowest, np.diff(np.r_[starts, len(rows)]))
    if large:  # every higher neighbour hooks onto the lowest node of this neighbourhood
        keep = neighbour > node
        a, b = neighbour[keep], node_lowest[keep]
    else:  # this node and its lower neighbours hook onto the lowest of them
        keep = neighbour <= node
        a, b = np.concatenate([neighbour[keep], nodes]), np.concatenate([node_lowest[keep], lowest])
        a, b = a[a != b], b[a != b]
    edges = np.concatenate([np.stack([a, b], 1), np.stack([b, a], 1)])
    buckets = [edges[edges[:, 0] % partitions == p] for p in range(partitions)]
    return buckets, np.stack([nodes, lowest], 1), hashlib.sha256(rows.tobytes()).digest()


def _round_function(partitions: int) -> Callable[[tuple[np.ndarray, bool]], tuple]:
    """star_round over (rows, large) chunks: one function for both kinds, so an engine can keep its workers."""
    return lambda chunk: star_round(chunk[0], partitions, chunk[1])


def in_process(chunks, make):
    """The engine that runs every chunk in this process (pipeline.Engine's signature)."""
    return map(make(), chunks)


def star_components(n: int, lo: np.ndarray, hi: np.ndarray, on: Components) -> np.ndarray:
    """(n,) int64: the lowest index of each document's component, documents joined by the pairs (lo, hi)."""
    engine, p = on.engine or in_process, max(on.partitions, 1)
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    rows = np.concatenate([np.stack([lo, hi], 1), np.stack([hi, lo], 1)])
    parts, large, before = [rows[rows[:, 0] % p == k] for k in range(p)], True, None
    while True:
        results = list(engine([(part, large) for part in parts], functools.partial(_round_function, p)))
        if large:
            digests = [digest for _, _, digest in results]
            if digests == before:  # a whole iteration changed no edge: every component is a star on its lowest
                break
            before = digests
        parts = [np.concatenate([buckets[k] for buckets, _, _ in results]) for k in range(p)]
        large = not large
    labels = np.arange(n)
    for _, nodes, _ in results:
        labels[nodes[:, 0]] = nodes[:, 1]
    return labels
