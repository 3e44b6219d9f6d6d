"""Resumable work: the units of a preparation (a cleaned chunk, dedup's decision, the tokenizer, a tokenised chunk),
each published whole in a work directory, local or on object storage (gs://), so that a rerun after a crash, on
this machine or another, redoes only the units not yet published.

A unit is one file of pickled objects written whole (jaxllm.storage.write_bytes: locally a temporary file renamed
into place, on object storage one upload), then a small marker `<name>.done` (its size and SHA-256) written the
same way: a unit counts as finished only once its marker is there. Nothing is ever appended or renamed on object
storage. Two processes doing the same work publish the same bytes, so either's unit serves. The work directory is
trusted by nobody but the preparations of the same data: the prepared data a reader sees is published separately,
whole (prepare.py). Its units are unpickled, so it must be as private as the code that reads it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pathlib
import pickle
import tempfile
from typing import Any, Callable, Iterable, Iterator

from jaxllm import storage


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

    def publish(self, name: str, *objects: Any) -> dict:
        """Writes the objects as unit `name` and then its marker; returns the marker (bytes, sha256)."""
        data = b"".join(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL) for obj in objects)
        storage.write_bytes(self.store / name, data)
        marker = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
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


def map_units(
    units: Units,
    prefix: str,
    chunks: Iterable[Any],
    engine: Callable[[Iterable[Any], Callable[[], Callable[[Any], Any]]], Iterator[Any]],
    make: Callable[[], Callable[[Any], Any]],
    objects: Callable[[Any], tuple] = lambda result: (result,),
    each: Callable[[Any], None] = lambda result: None,
) -> tuple[int, int]:
    """Runs make()(chunk) on the engine for each chunk whose unit `<prefix>-<i>` is not published yet and publishes
    objects(result) as that unit (then calls each(result)); returns the number of chunks and how many of them an
    earlier run had published. The chunks are read in full either way: their boundaries name the units."""
    finished = units.finished()
    todo, count = collections.deque(), [0]

    def unfinished() -> Iterator[Any]:
        for i, chunk in enumerate(chunks):
            count[0] = i + 1
            if unit_name(prefix, i) not in finished:
                todo.append(i)  # the engine returns results in input order: the first pending one is next
                yield chunk

    for result in engine(unfinished(), make):
        units.publish(unit_name(prefix, todo.popleft()), *objects(result))
        each(result)
    return count[0], sum(unit_name(prefix, i) in finished for i in range(count[0]))
