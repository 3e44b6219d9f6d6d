"""Document sources: each yields `Document`s in a deterministic order, one at a time (nothing is held in memory).

Source strings (the `data.sources` config list):
  stdlib                 the running interpreter's standard library (.py files, site-packages excluded): needs no
                         download; kind 'code'
  stdlib-prose           the same files' prose: one document a module of its docstrings and comment blocks, and
                         one a help topic of `pydoc_data` (the language reference pages); kind 'prose'
  site-packages[:MB]     every installed package's Python source ('code') and documentation (.md, .rst, .txt:
                         'prose') under the running interpreter's site-packages, package metadata folders left out:
                         a corpus of hundreds of MB that needs no download; with MB, only the first MB megabytes
                         in path order
  file:PATH              one UTF-8 text file, one document (prepare holds out its last val_fraction by position)
  dir:PATH               every text file under PATH (suffixes in TEXT_SUFFIXES), sorted by relative path
  jsonl:GLOB:FIELD       JSON Lines files (.jsonl, .jsonl.gz, .jsonl.zst), one document a line, text in FIELD
  parquet:GLOB:COLUMN    Parquet files, one document a row, text in COLUMN
  tfds:NAME[/CONFIG][:VERSION][@DATA_DIR]
                         a prepared TFDS dataset, every split, read through ArrayRecord without TensorFlow; the
                         text is the feature 'text' (or the only text feature); DATA_DIR defaults to TFDS's own
                         ($TFDS_DATA_DIR or ~/tensorflow_datasets) and may be a gs:// path on TPU VMs
  warc:GLOB              web crawls: WARC files (.warc, .warc.gz; each HTML page's main text, extracted with
                         trafilatura) and WET files (.warc.wet.gz; their text as it is), one document a record, with
                         its URL and crawl date in `meta`; needs the web extra (pip install -e '.[web]'); see warc.py

Kinds: files ending in a CODE_SUFFIXES suffix are 'code', others 'prose' (cleaning applies a profile to each);
records from JSONL, Parquet and TFDS are 'prose' unless they carry a 'kind' field saying 'code'; crawled pages are
'prose'.
Reading never raises for one bad input: an unreadable, undecodable or corrupt file (or record) is counted in
`SourceStats` and skipped. A source naming nothing that exists is a configuration error.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import gzip
import io
import json
import math
import os
import pathlib
import sysconfig
from typing import Iterator

from jaxllm.config import ConfigError
from jaxllm.data import warc

CODE_SUFFIXES = frozenset(
    {
        ".py",
        ".pyi",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".hpp",
        ".rs",
        ".go",
        ".java",
        ".js",
        ".ts",
        ".sh",
        ".toml",
        ".yaml",
        ".yml",
        ".json",
    }
)
TEXT_SUFFIXES = CODE_SUFFIXES | {".txt", ".md", ".rst", ".tex", ".html", ".org", ""}
SITE_PACKAGES_SUFFIXES = frozenset({".py", ".md", ".rst", ".txt"})


@dataclasses.dataclass(frozen=True)
class Document:
    id: str  # stable across machines: the source name plus a relative path (the split hashes it)
    text: str
    origin: str  # which source it came from, e.g. 'stdlib' or 'file:notes.txt'
    kind: str = "prose"  # 'code' or 'prose': cleaning applies a different profile to each
    # what is known of it besides its text, as (key, value) pairs: a crawl's url and date, the language found
    meta: tuple[tuple[str, str | float], ...] = ()


@dataclasses.dataclass
class SourceStats:
    files_read: int = 0
    files_skipped: int = 0  # undecodable, unreadable or corrupt
    records_skipped: int = 0  # lines or rows without usable text inside files that were read
    skipped_examples: list[str] = dataclasses.field(default_factory=list)

    def skip(self, what: str, why: str) -> None:
        self.files_skipped += 1
        self._example(what, why)

    def skip_record(self, what: str, why: str) -> None:
        self.records_skipped += 1
        self._example(what, why)

    def _example(self, what: str, why: str) -> None:
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(f"{what}: {why}")


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _kind(path: pathlib.Path) -> str:
    return "code" if path.suffix.lower() in CODE_SUFFIXES else "prose"


def _read_text(path: pathlib.Path, stats: SourceStats, label: str) -> str | None:
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        stats.skip(label, type(e).__name__)
        return None
    stats.files_read += 1
    return text


def _suffix(name: str) -> str:
    """pathlib's suffix of a file name, without building a Path."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def _walk(root: pathlib.Path, suffixes, top_excluded: tuple[str, ...] = ()) -> list[pathlib.Path]:
    """Files under root with one of the suffixes, sorted as pathlib sorts (component by component); hidden folders,
    caches and root's folders ending in top_excluded are not entered. Strings until the end: site-packages holds
    tens of thousands of files, and pathlib's per-file cost made listing them a second of the driver's time."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in ("site-packages", "dist-packages", "__pycache__", "node_modules")
            and not (top_excluded and d.endswith(top_excluded) and dirpath == str(root))
        ]
        paths += [
            os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and _suffix(f).lower() in suffixes
        ]
    return [pathlib.Path(p) for p in sorted(paths, key=lambda p: p.split(os.sep))]


def stdlib_documents(stats: SourceStats, root: pathlib.Path | None = None) -> Iterator[Document]:
    """Every .py file under the stdlib, in sorted path order; ids are paths relative to the stdlib root."""
    root = root or stdlib_root()
    for path in _walk(root, {".py"}):
        rel = path.relative_to(root).as_posix()
        text = _read_text(path, stats, rel)
        if text is not None:
            yield Document(id=f"stdlib/{rel}", text=text, origin="stdlib", kind="code")


def _module_prose(source: str) -> str:
    """Docstrings (module, classes, functions) and blocks of consecutive comment lines, separated by blank lines."""
    parts = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # test fixtures with bad syntax: their comments still count
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring:
                    parts.append(docstring)
    block: list[str] = []
    for line in source.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("#!") and "-*-" not in stripped:  # not shebang, coding
            block.append(stripped[1:].strip())
        elif block:
            if any(s.strip() for s in block):
                parts.append("\n".join(block).strip())
            block = []
    return "\n\n".join(parts)


def stdlib_prose_documents(stats: SourceStats, root: pathlib.Path | None = None) -> Iterator[Document]:
    """The prose view of stdlib_documents, then the pydoc_data help topics (sorted by topic name)."""
    for doc in stdlib_documents(stats, root):
        prose = _module_prose(doc.text)
        if prose:
            yield Document(id=doc.id.replace("stdlib/", "stdlib-prose/", 1), text=prose, origin="stdlib-prose")
    try:
        from pydoc_data.topics import topics  # noqa: PLC0415 (some distributions strip the help topics)
    except ImportError:  # some distributions strip the help topics
        return
    for name in sorted(topics):
        yield Document(id=f"stdlib-prose/pydoc_data/{name}", text=topics[name], origin="stdlib-prose")


def site_packages_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["purelib"])


def _site_packages_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Sources and documentation of the installed packages, sorted; *.dist-info and *.egg-info folders (licenses,
    file lists, entry points) are metadata, not text, and left out."""
    return _walk(root, SITE_PACKAGES_SUFFIXES, top_excluded=(".dist-info", ".egg-info"))


def _megabytes(source: str, arg: str) -> float:
    """The size cap of a site-packages:MB source in megabytes, infinite without one."""
    try:
        megabytes = float(arg) if arg else math.inf
    except ValueError:
        megabytes = math.nan
    if not megabytes > 0:
        raise ConfigError(
            f"data source {source}: {arg!r} is not a size in megabytes; write site-packages, or site-packages:MB "
            f"with a positive MB such as site-packages:100"
        )
    return megabytes


def site_packages_documents(
    stats: SourceStats, max_megabytes: float = math.inf, root: pathlib.Path | None = None
) -> Iterator[Document]:
    """The installed packages' files in sorted path order, until max_megabytes of text have been given; ids are
    paths relative to site-packages."""
    root = root or site_packages_root()
    origin = "site-packages" if max_megabytes == math.inf else f"site-packages:{max_megabytes:g}"
    remaining = max_megabytes * 1e6
    for path in _site_packages_files(root):
        if remaining <= 0:
            return
        rel = path.relative_to(root).as_posix()
        text = _read_text(path, stats, rel)
        if text is not None:
            remaining -= len(text.encode("utf-8"))
            yield Document(id=f"site-packages/{rel}", text=text, origin=origin, kind=_kind(path))


def file_documents(path_str: str, stats: SourceStats) -> Iterator[Document]:
    path = pathlib.Path(path_str).expanduser()
    if not path.is_file():
        raise ConfigError(f"data source file:{path_str}: no such file; give a path to a UTF-8 text file")
    text = _read_text(path, stats, path_str)
    if text is not None:
        yield Document(id=f"file/{path.name}", text=text, origin=f"file:{path_str}", kind=_kind(path))


def dir_documents(path_str: str, stats: SourceStats) -> Iterator[Document]:
    """Text files under the folder; ids are the folder's name and the file's path relative to it."""
    root = pathlib.Path(path_str).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data source dir:{path_str}: no such folder; give a folder of text files")
    for path in _walk(root, TEXT_SUFFIXES):
        rel = path.relative_to(root).as_posix()
        text = _read_text(path, stats, f"{path_str}/{rel}")
        if text is not None:
            yield Document(id=f"{root.resolve().name}/{rel}", text=text, origin=f"dir:{path_str}", kind=_kind(path))


def _glob(kind: str, pattern: str) -> list[pathlib.Path]:
    paths = sorted(pathlib.Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise ConfigError(
            f"data source {kind}:{pattern}: no file matches; check the pattern (relative to {os.getcwd()})"
        )
    return paths


def _record_kind(record) -> str:
    return "code" if record.get("kind") in ("code", b"code") else "prose"


def _open_lines(path: pathlib.Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    if path.suffix == ".zst":
        import zstandard  # noqa: PLC0415 (optional: only Zstandard-compressed inputs need it)

        return io.TextIOWrapper(
            zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True), encoding="utf-8"
        )
    return open(path, encoding="utf-8")


def jsonl_documents(pattern: str, field: str, stats: SourceStats) -> Iterator[Document]:
    """One document a line; ids are the file name and line number. A bad line is skipped; a file that fails to
    open or decompress midway is reported (the lines before the failure are kept)."""
    for path in _glob("jsonl", pattern):
        lineno = 0
        try:
            with _open_lines(path) as lines:
                stats.files_read += 1
                for lineno, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        text = record[field]
                        if not isinstance(text, str):
                            raise TypeError(f"field {field!r} is {type(text).__name__}, not a string")
                    except (ValueError, KeyError, TypeError) as e:
                        stats.skip_record(f"{path.name}:{lineno}", f"{type(e).__name__}: {e}"[:120])
                        continue
                    yield Document(
                        id=f"jsonl/{path.name}/{lineno}",
                        text=text,
                        origin=f"jsonl:{pattern}",
                        kind=_record_kind(record),
                    )
        except Exception as e:  # gzip, zstandard and the OS each raise their own types for a corrupt file
            stats.skip(str(path), f"{type(e).__name__} after {lineno} lines: {e}"[:160])


def parquet_documents(pattern: str, column: str, stats: SourceStats) -> Iterator[Document]:
    """One document a row, read a batch of rows at a time; ids are the file name and row number."""
    import pyarrow.parquet as pq  # noqa: PLC0415 (only Parquet inputs need it)

    for path in _glob("parquet", pattern):
        row = 0
        try:
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            if column not in names:
                raise KeyError(f"no column {column!r}; it has {', '.join(names)}")
            stats.files_read += 1
            columns = [column] + (["kind"] if "kind" in names else [])
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):
                for record in batch.to_pylist():
                    row += 1
                    if not isinstance(record[column], str):
                        stats.skip_record(f"{path.name}:{row}", f"column {column!r} is not a string")
                        continue
                    yield Document(
                        id=f"parquet/{path.name}/{row}",
                        text=record[column],
                        origin=f"parquet:{pattern}",
                        kind=_record_kind(record),
                    )
        except Exception as e:  # pyarrow raises its own types (ArrowInvalid, ArrowIOError) for a corrupt file
            stats.skip(str(path), f"{type(e).__name__} after {row} rows: {e}"[:160])


def tfds_documents(spec: str, stats: SourceStats) -> Iterator[Document]:
    """All splits (sorted by name) of a prepared TFDS dataset, records in index order; ids are the dataset name and
    the record's 'id' feature when it has one (as tfds_builder writes), else split and index."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (slow to import, and only TFDS inputs need it)

    name, _, data_dir = spec.partition("@")
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        splits = sorted(builder.info.splits)
        features = builder.info.features
    except Exception as e:  # tfds raises a zoo of types (DatasetNotFoundError, FileNotFoundError, ...)
        raise ConfigError(
            f"data source tfds:{spec}: cannot open it ({type(e).__name__}: {str(e)[:200]}); prepare "
            f"it first (see jaxllm.data.tfds_builder) or give its folder as tfds:NAME@DATA_DIR"
        ) from e
    text_features = [k for k, v in features.items() if isinstance(v, tfds.features.Text)]
    field = "text" if "text" in text_features else (text_features[0] if len(text_features) == 1 else None)
    if field is None:
        raise ConfigError(
            f"data source tfds:{spec}: no feature named 'text' and {len(text_features)} text features "
            f"({', '.join(text_features)}); rename the text feature to 'text'"
        )
    for split in splits:
        source = builder.as_data_source(split=split)
        stats.files_read += 1
        for index in range(len(source)):
            try:
                record = source[index]
                text = record[field]
                text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                stats.skip_record(f"tfds:{name}/{split}/{index}", type(e).__name__)
                continue
            record_id = record.get("id")
            record_id = record_id.decode("utf-8") if isinstance(record_id, bytes) else f"{split}/{index}"
            yield Document(
                id=f"tfds/{builder.name}/{record_id}", text=text, origin=f"tfds:{spec}", kind=_record_kind(record)
            )


def warc_documents(pattern: str, stats: SourceStats) -> Iterator[Document]:
    """One document a crawled record with text (see warc.py); ids are the file name and the WARC record id."""
    for path in _glob("warc", pattern):
        for record_id, text, meta in warc.read_records(path, stats):
            yield Document(id=f"warc/{path.name}#{record_id}", text=text, origin=f"warc:{pattern}", meta=meta)


def _two_parts(kind: str, arg: str, what: str) -> tuple[str, str]:
    pattern, sep, field = arg.rpartition(":")
    if not sep or not pattern or not field:
        raise ConfigError(f"data source {kind}:{arg}: expected {kind}:GLOB:{what}, e.g. {kind}:data/*.{kind}:text")
    return pattern, field


def input_paths(source: str) -> list[pathlib.Path]:
    """The local files a source reads, for noticing changed inputs (the stdlib changes with the interpreter, a
    TFDS dataset with its version, so neither lists files). A pattern that matches nothing lists nothing here;
    reading the source reports it."""
    kind, _, arg = source.partition(":")
    if kind == "file":
        return [pathlib.Path(arg).expanduser()]
    if kind == "dir" and pathlib.Path(arg).expanduser().is_dir():
        return _walk(pathlib.Path(arg).expanduser(), TEXT_SUFFIXES)
    if kind in ("jsonl", "parquet") and ":" in arg:
        return sorted(pathlib.Path(p) for p in glob.glob(os.path.expanduser(arg.rpartition(":")[0]), recursive=True))
    if kind == "warc":
        return sorted(pathlib.Path(p) for p in glob.glob(os.path.expanduser(arg), recursive=True))
    if kind == "site-packages":
        return _site_packages_files(site_packages_root())
    return []


def iter_documents(sources: tuple[str, ...], stats: SourceStats) -> Iterator[Document]:
    """Documents of every source in turn. Raises ConfigError at the end if nothing could be read at all."""
    produced = 0
    for doc in _documents_of(sources, stats):
        produced += 1
        yield doc
    if not produced and (stats.files_skipped or stats.records_skipped):
        raise ConfigError(
            f"data sources {list(sources)}: every input failed ({stats.files_skipped} files and "
            f"{stats.records_skipped} records skipped), e.g. {'; '.join(stats.skipped_examples)}"
        )


def check_sources(sources: tuple[str, ...]) -> None:
    """Refuses a source of no known form (ConfigError), before anything is read, printed or written."""
    for source in sources:
        kind, _, arg = source.partition(":")
        if source in ("stdlib", "stdlib-prose") or (kind in ("file", "dir", "tfds") and arg):
            continue
        if kind in ("jsonl", "parquet") and arg:
            _glob(kind, _two_parts(kind, arg, "FIELD" if kind == "jsonl" else "COLUMN")[0])
            continue
        if kind == "site-packages":
            _megabytes(source, arg)
            continue
        if kind == "warc" and arg:
            warc.require_web_extra(source)
            _glob(kind, arg)  # like a malformed source, before anything is printed or written
            continue
        raise ConfigError(
            f"unknown data source {source!r}: use stdlib, stdlib-prose, site-packages[:MB], file:PATH, dir:PATH, "
            f"jsonl:GLOB:FIELD, parquet:GLOB:COLUMN, tfds:NAME[/CONFIG][:VERSION][@DATA_DIR] or warc:GLOB"
        )


def _documents_of(sources: tuple[str, ...], stats: SourceStats) -> Iterator[Document]:
    check_sources(sources)
    for source in sources:
        kind, _, arg = source.partition(":")
        if source == "stdlib":
            yield from stdlib_documents(stats)
        elif source == "stdlib-prose":
            yield from stdlib_prose_documents(stats)
        elif kind == "file" and arg:
            yield from file_documents(arg, stats)
        elif kind == "dir" and arg:
            yield from dir_documents(arg, stats)
        elif kind == "jsonl" and arg:
            yield from jsonl_documents(*_two_parts(kind, arg, "FIELD"), stats)
        elif kind == "parquet" and arg:
            yield from parquet_documents(*_two_parts(kind, arg, "COLUMN"), stats)
        elif kind == "site-packages":
            yield from site_packages_documents(stats, _megabytes(source, arg))
        elif kind == "warc":
            yield from warc_documents(arg, stats)
        else:  # tfds, the only form left (check_sources)
            yield from tfds_documents(arg, stats)
