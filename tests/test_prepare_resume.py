"""Resume equals uninterrupted, for prepared data: a preparation killed with SIGKILL (once while cleaning, once
while tokenising) and rerun redoes only the units not yet published and gives the bytes of an uninterrupted run."""

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys

from jaxllm.data import pipeline
from jaxllm.data import prepare as prepare_module
from jaxllm.data.prepare import cache_key, prepare
from tests.conftest import tiny_config
from tests.prepared_files import contents

REPO = pathlib.Path(__file__).resolve().parent.parent
# A preparation in its own process, in chunks of 3 documents (the tiny corpus makes 9 chunks), that kills itself
# with SIGKILL right after publishing the unit named by argv[2] (none: it runs to the end).
CHILD = """
import json, os, signal, sys
from jaxllm.config import config_from_dict
from jaxllm.data import pipeline, prepare, units
pipeline.CHUNK_DOCS = prepare.ENCODE_DOCS = 3
publish = units.Units.publish
def publish_then_die(self, name, *objects):
    marker = publish(self, name, *objects)
    if name == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)
    return marker
units.Units.publish = publish_then_die
prepare.prepare(config_from_dict(json.loads(sys.argv[1])), progress=True)
"""


def prepare_in_child(cfg, kill_after: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", CHILD, cfg.to_json(), kill_after]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def _published(work: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Each published unit's (inode, modification time) by its path under the work directory."""
    return {
        str(p.relative_to(work)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in work.rglob("*")
        if p.with_name(p.name + ".done").is_file()
    }


def test_a_killed_preparation_resumes_to_the_uninterrupted_bytes(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "CHUNK_DOCS", 3)
    monkeypatch.setattr(prepare_module, "ENCODE_DOCS", 3)
    cfg = tiny_config(tiny_corpus, tmp_path / "killed")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=1))
    uninterrupted = prepare(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=str(tmp_path))))
    final, work = tmp_path / "killed" / cache_key(cfg), tmp_path / "killed" / f".{cache_key(cfg)}.work"

    first = prepare_in_child(cfg, kill_after="chunk-000004")  # the fifth of 9 cleaned chunks
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert not final.exists()  # nothing a reader would trust
    cleaned_before = _published(work)
    assert sorted(cleaned_before) == [f"clean/chunk-00000{i}" for i in range(5)]

    second = prepare_in_child(cfg, kill_after="train-000002")  # the third tokenised chunk of the training split
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert "dedup over 9 cleaned chunks (5 of 9 chunks cleaned by an earlier run)" in second.stderr
    assert not final.exists()
    published = _published(work)
    assert {k: published[k] for k in cleaned_before} == cleaned_before  # the first five were not written again
    assert sorted(k for k in published if k.startswith("tokenize/")) == [
        "tokenize/tokenizer",
        *(f"tokenize/train-00000{i}" for i in range(3)),
    ]

    third = prepare_in_child(cfg, kill_after="")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "(9 of 9 chunks cleaned by an earlier run)" in third.stderr
    assert "train: 3 tokenised chunks were published by an earlier run" in third.stdout
    assert not work.exists() and sorted(p.name for p in final.parent.iterdir()) == [final.name]
    assert contents(final) == contents(uninterrupted.dir)
