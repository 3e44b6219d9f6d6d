"""Document sources: each yields `Document`s in a deterministic order.

Source strings (the `data.sources` config list):
  stdlib          the running interpreter's standard library (.py files, site-packages excluded): needs no download
  file:PATH       one UTF-8 text file, one document

Reading never raises for one bad file: undecodable or unreadable files are counted in `SourceStats` and skipped.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sysconfig
from typing import Iterator

from jaxllm.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Document:
    id: str  # stable across machines: the source name plus a relative path (the split hashes it)
    text: str
    origin: str  # which source it came from, e.g. 'stdlib' or 'file:notes.txt'
    kind: str = "prose"  # 'code' or 'prose': cleaning applies a different profile to each


@dataclasses.dataclass
class SourceStats:
    files_read: int = 0
    files_skipped: int = 0  # undecodable or unreadable
    skipped_examples: list[str] = dataclasses.field(default_factory=list)

    def skip(self, what: str, why: str) -> None:
        self.files_skipped += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(f"{what}: {why}")


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _read_text(path: pathlib.Path, stats: SourceStats, label: str) -> str | None:
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        stats.skip(label, type(e).__name__)
        return None
    stats.files_read += 1
    return text


def stdlib_documents(stats: SourceStats, root: pathlib.Path | None = None) -> Iterator[Document]:
    """Every .py file under the stdlib, in sorted path order; ids are paths relative to the stdlib root."""
    root = root or stdlib_root()
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        paths += [pathlib.Path(dirpath) / f for f in filenames if f.endswith(".py")]
    for path in sorted(paths):
        rel = path.relative_to(root).as_posix()
        text = _read_text(path, stats, rel)
        if text is not None:
            yield Document(id=f"stdlib/{rel}", text=text, origin="stdlib", kind="code")


def file_documents(path_str: str, stats: SourceStats) -> Iterator[Document]:
    path = pathlib.Path(path_str).expanduser()
    if not path.is_file():
        raise ConfigError(f"data source file:{path_str}: no such file; give a path to a UTF-8 text file")
    text = _read_text(path, stats, path_str)
    if text is not None:
        yield Document(id=f"file/{path.name}", text=text, origin=f"file:{path_str}", kind="prose")


def iter_documents(sources: tuple[str, ...], stats: SourceStats) -> Iterator[Document]:
    for source in sources:
        kind, _, arg = source.partition(":")
        if source == "stdlib":
            yield from stdlib_documents(stats)
        elif kind == "file" and arg:
            yield from file_documents(arg, stats)
        else:
            raise ConfigError(f"unknown data source {source!r}: use 'stdlib' or 'file:PATH'")
