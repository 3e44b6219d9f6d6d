"""Resumable work: the units of a preparation (a cleaned chunk, dedup's decision, the tokenizer, a tokenised chunk),
each published whole in a work directory, local or on object storage (gs://), so that a rerun after a crash, on
this machine or another, redoes only the units not yet published.

A unit is one file of pickled objects written whole (jaxllm.storage.write_bytes: locally a temporary file renamed
into place, on object storage one upload), then a small marker `<name>.done` (its size and SHA-256) written the
same way: a unit counts as finished only once its marker is there. The objects are pickled and hashed where they
were made (`pack`: in the engine's worker for a mapped chunk), so the driver only writes the bytes it is handed, and
map_units writes them from one thread, in input order, so the driver does not wait for each write's fsync: its
serial share of the work, which no worker can take, stays small. Nothing is ever appended or renamed on object
storage. Two processes doing the same work publish the same bytes, so either's unit serves. The work directory is
trusted by nobody but the preparations of the same data: the prepared data a reader sees is published separately,
whole (prepare.py). Its units are unpickled, so it must be as private as the code that reads it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import io
import json
import os
import pathlib
import pickle
import tempfile
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from jaxllm import storage

WRITES_AHEAD = 4  # units handed to the writer thread and not yet published, at most (memory stays bounded)


class Packed(NamedTuple):
    """A unit's bytes (its objects pickled one after the other) and their SHA-256."""

    data: bytes
    sha256: str


def pack(*objects: Any) -> Packed:
    data = b"".join(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL) for obj in objects)
    return Packed(data, hashlib.sha256(data).hexdigest())


class Units:
    def __init__(self, directory: str | os.PathLike):
        self.store = storage.path(directory)  # where the units are published
        # local folder for the work's temporary files (dedup's spill, the tokenizer's training): never object storage
        self.directory = pathlib.Path(tempfile.gettempdir()) if storage.is_remote(self.store) else self.store
        self.directory.mkdir(parents=True, exist_ok=True)

    def finished(self) -> set[str]:
        """Names of the units published so far."""
        return {path.name.removesuffix(".done") for path in self.store.glob("*.done")}

    def done(self, name: str) -> bool:
        return (self.store / f"{name}.done").is_file()

    def publish(self, name: str, packed: Packed) -> dict:
        """Writes the packed objects as unit `name` and then its marker; returns the marker (bytes, sha256)."""
        storage.write_bytes(self.store / name, packed.data)
        marker = {"bytes": len(packed.data), "sha256": packed.sha256}
        storage.write_bytes(self.store / f"{name}.done", json.dumps(marker).encode())
        return marker

    def load(self, name: str) -> Iterator[Any]:
        """The objects of a published unit, in the order they were written, each read only when asked for (from
        object storage the unit is downloaded whole first)."""
        path = self.store / name
        with io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else open(path, "rb") as f:
            while True:
                try:
                    yield pickle.load(f)
                except EOFError:
                    return


def unit_name(prefix: str, i: int) -> str:
    return f"{prefix}-{i:06d}"


def wait_for_writes(writes: collections.deque, most: int) -> None:
    """Waits until at most `most` of the writer thread's units are still being published; raises what a publish
    raised."""
    while len(writes) > most:
        writes.popleft().result()


def _packing(make: Callable[[], Callable[[Any], Any]], objects: Callable[[Any], tuple]) -> Callable[[Any], Packed]:
    """make()(chunk), packed as its unit in the worker that ran it."""
    fn = make()
    return lambda chunk: pack(*objects(fn(chunk)))


def _alone(result: Any) -> tuple:
    return (result,)


def map_units(
    units: Units,
    prefix: str,
    chunks: Iterable[Any],
    engine: Callable[[Iterable[Any], Callable[[], Callable[[Any], Any]]], Iterator[Any]],
    make: Callable[[], Callable[[Any], Any]],
    objects: Callable[[Any], tuple] = _alone,
    each: Callable[[Any], None] = lambda chunk: None,
) -> tuple[int, int]:
    """Runs make()(chunk) on the engine for each chunk whose unit `<prefix>-<i>` is not published yet and publishes
    objects(result), packed by the worker, as that unit (then calls each(chunk)); returns the number of chunks and
    how many of them an earlier run had published. The chunks are read in full either way: their boundaries name
    the units. `objects` runs in the workers: it must be picklable (a module's function)."""
    finished = units.finished()
    todo, count = collections.deque(), [0]

    def unfinished() -> Iterator[Any]:
        for i, chunk in enumerate(chunks):
            count[0] = i + 1
            if unit_name(prefix, i) not in finished:
                todo.append((i, chunk))  # the engine returns results in input order: the first pending one is next
                yield chunk

    # One thread publishes the units, in input order: a unit's write ends in an fsync, which the driver need not
    # wait for while the workers' results keep coming.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="units") as writer:
        writes: collections.deque = collections.deque()
        for packed in engine(unfinished(), functools.partial(_packing, make, objects)):
            i, chunk = todo.popleft()
            writes.append(writer.submit(units.publish, unit_name(prefix, i), packed))
            wait_for_writes(writes, WRITES_AHEAD)
            each(chunk)
        wait_for_writes(writes, 0)
    return count[0], sum(unit_name(prefix, i) in finished for i in range(count[0]))
