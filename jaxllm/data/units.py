"""Resumable work: the units of a preparation (a cleaned chunk, dedup's decision, the tokenizer, a tokenised chunk),
each published whole in a work directory, so that a rerun after a crash redoes only the units not yet published.

A unit is one file of pickled objects, written under a temporary name and renamed into place, then a small marker
`<name>.done` (its size and SHA-256) written the same way: a unit counts as finished only once its marker is
there. Nothing is ever appended to a published file, so the same two steps (write an object whole, then its
marker) work on object storage. The work directory is trusted by nobody but the preparation that owns it: the
prepared data a reader sees is published separately, whole (prepare.py).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import pickle
from typing import Any, Callable, Iterable, Iterator


class Units:
    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def finished(self) -> set[str]:
        """Names of the units published so far."""
        return {path.name.removesuffix(".done") for path in self.directory.glob("*.done")}

    def done(self, name: str) -> bool:
        return (self.directory / f"{name}.done").is_file()

    def publish(self, name: str, *objects: Any) -> dict:
        """Writes the objects as unit `name` and then its marker; returns the marker (bytes, sha256)."""
        path = self.directory / name
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")  # a second process preparing the same data has its own
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:
            for obj in objects:
                data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
                digest.update(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the marker must never name bytes that a power loss could still take back
        os.replace(tmp, path)
        marker = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
        _write_whole(self.directory / f"{name}.done", json.dumps(marker).encode())
        return marker

    def load(self, name: str) -> Iterator[Any]:
        """The objects of a published unit, in the order they were written, each read only when asked for."""
        with open(self.directory / name, "rb") as f:
            while True:
                try:
                    yield pickle.load(f)
                except EOFError:
                    return


def _write_whole(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
