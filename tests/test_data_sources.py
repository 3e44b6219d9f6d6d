"""Every source kind on small local fixtures, including a TFDS dataset built offline, and bad inputs skipped."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxllm.config import ConfigError, load_experiment
from jaxllm.data.sources import SourceStats, iter_documents, stdlib_documents, stdlib_prose_documents
from jaxllm.data.tfds_builder import build_text_folder


def read(sources, stats=None):
    stats = stats if stats is not None else SourceStats()
    return [(d.id, d.text, d.kind) for d in iter_documents(tuple(sources), stats)], stats


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "b.md").write_text("# Title\nSome notes.\n")
    (root / "a.txt").write_text("plain text\n")
    (root / "sub" / "tool.py").write_text("print('hi')\n")
    (root / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: ignored
    (root / "bad.txt").write_bytes(b"\xff\xfe broken")  # undecodable: skipped and counted
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_text("x")
    return root


def test_dir_and_file(folder):
    docs, stats = read([f"dir:{folder}", f"file:{folder / 'a.txt'}"])
    assert docs == [
        ("notes/a.txt", "plain text\n", "prose"),
        ("notes/b.md", "# Title\nSome notes.\n", "prose"),
        ("notes/sub/tool.py", "print('hi')\n", "code"),
        ("file/a.txt", "plain text\n", "prose"),
    ]
    assert (stats.files_read, stats.files_skipped) == (4, 1)
    assert stats.skipped_examples == [f"{folder}/bad.txt: UnicodeDecodeError"]


def test_jsonl_plain_gzip_zstd_and_bad_lines(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    lines = [
        json.dumps({"text": "first"}),
        "not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": "code here", "kind": "code"}),
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gzipped"}) + "\n")
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "zstd"}\n'))
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(b'{"text": "cut"}\n{"text": "lost"}\n')[:-12])  # truncated
    docs, stats = read([f"jsonl:{tmp_path}/*.jsonl*:text"])
    assert docs == [
        ("jsonl/a.jsonl/1", "first", "prose"),
        ("jsonl/a.jsonl/4", "code here", "code"),
        ("jsonl/b.jsonl.gz/1", "gzipped", "prose"),
        ("jsonl/c.jsonl.zst/1", "zstd", "prose"),
        ("jsonl/d.jsonl.gz/1", "cut", "prose"),
    ]
    assert (stats.files_read, stats.files_skipped, stats.records_skipped) == (4, 1, 2)
    assert stats.skipped_examples[2].startswith(f"{tmp_path}/d.jsonl.gz: EOFError after 1 lines")


def test_parquet(tmp_path):
    pq.write_table(pa.table({"content": ["row one", None, "row three"], "n": [1, 2, 3]}), tmp_path / "x.parquet")
    (tmp_path / "y.parquet").write_bytes(b"PAR1 corrupt")
    docs, stats = read([f"parquet:{tmp_path}/*.parquet:content"])
    assert docs == [("parquet/x.parquet/1", "row one", "prose"), ("parquet/x.parquet/3", "row three", "prose")]
    assert (stats.files_read, stats.files_skipped, stats.records_skipped) == (1, 1, 1)


def test_tfds_dataset_built_offline_and_read_without_tensorflow(folder, tmp_path):
    path = build_text_folder(str(folder), "my_notes", str(tmp_path / "tfds"))
    assert path == tmp_path / "tfds" / "my_notes" / "1.0.0"
    docs, stats = read([f"tfds:my_notes@{tmp_path / 'tfds'}", f"tfds:my_notes:1.0.0@{tmp_path / 'tfds'}"])
    assert sorted(docs[:3]) == [
        ("tfds/my_notes/notes/a.txt", "plain text\n", "prose"),
        ("tfds/my_notes/notes/b.md", "# Title\nSome notes.\n", "prose"),
        ("tfds/my_notes/notes/sub/tool.py", "print('hi')\n", "code"),
    ]
    assert docs[3:] == docs[:3]  # the same dataset named with its version
    with pytest.raises(ConfigError, match="tfds:missing@"):
        read([f"tfds:missing@{tmp_path / 'tfds'}"])


def test_stdlib_views(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        '#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n"""Module doc."""\n\n'
        "# A comment block\n# on two lines.\nx = 1  # trailing: code\n\n"
        'def f():\n    """Function doc."""\n'
    )
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "third.py").write_text("x = 1\n")
    stats = SourceStats()
    assert [(d.id, d.origin, d.kind) for d in stdlib_documents(stats, tmp_path)] == [
        ("stdlib/pkg/mod.py", "stdlib", "code")
    ]
    prose = list(stdlib_prose_documents(stats, tmp_path))
    assert (prose[0].id, prose[0].kind) == ("stdlib-prose/pkg/mod.py", "prose")
    assert prose[0].text == "Module doc.\n\nFunction doc.\n\nA comment block\non two lines."
    topics = {d.id: d.text for d in prose[1:]}
    assert "assert_stmt" in topics["stdlib-prose/pydoc_data/assert"]


def test_errors_name_the_source(tmp_path):
    with pytest.raises(ConfigError, match="unknown data source 'ftp:x'"):
        read(["ftp:x"])
    with pytest.raises(ConfigError, match="no file matches"):
        read([f"jsonl:{tmp_path}/none*.jsonl:text"])
    with pytest.raises(ConfigError, match="expected jsonl:GLOB:FIELD"):
        read(["jsonl:onlyglob"])
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="every input failed"):
        read([f"jsonl:{tmp_path}/bad.jsonl.gz:text"])


def test_fineweb_edu_reads_the_datasets_own_layout(tmp_path, monkeypatch):
    """experiments/fineweb_edu.py reads the Parquet files where `huggingface-cli download` puts them, from the
    directory the command runs in; its other columns (id, url, score, ...) are left out."""
    monkeypatch.chdir(tmp_path)
    shards = tmp_path / "data" / "fineweb-edu" / "sample" / "10BT"
    shards.mkdir(parents=True)
    for name, texts in (("001_00000.parquet", ["third page"]), ("000_00000.parquet", ["first page", "second page"])):
        columns = {"text": texts, "id": [f"<urn:{t}>" for t in texts], "url": ["https://example.org"] * len(texts)}
        pq.write_table(pa.table(columns | {"score": [3.1] * len(texts)}), shards / name)
    docs, _ = read(load_experiment("fineweb_edu").data.sources)
    assert [text for _, text, _ in docs] == ["first page", "second page", "third page"]
    assert {kind for _, _, kind in docs} == {"prose"}
