"""Engines agree: the Ray engine prepares the same bytes as the local one, from the library and the command line.

One local Ray cluster of 2 CPUs serves the whole module (starting one takes seconds)."""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import ray

import jaxllm.data
from jaxllm.cli import run_main
from jaxllm.config.clean import DedupConfig
from jaxllm.data import __main__ as data_command
from jaxllm.data import dedup, pipeline
from jaxllm.data import prepare as prepare_module
from jaxllm.data.components import Components, in_process, star_components
from jaxllm.data.dedup import join_components, verified_pairs
from jaxllm.data.engine_ray import cluster, map_on_ray
from jaxllm.data.prepare import cache_key, load_prepared, prepare
from tests.conftest import tiny_config
from tests.prepared_files import contents
from tests.test_data_dedup import planted_signatures
from tests.test_data_pipeline import _make_kill_self_at_third
from tests.test_prepare_resume import prepare_in_child

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _replace(cfg, **data):
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data))


@pytest.mark.slow  # two preparations, one on Ray resuming a third, killed
def test_ray_and_local_engines_prepare_identical_bytes(ray_cluster, tiny_corpus, tmp_path, monkeypatch, capsys):
    # Chunks of 3 documents: the 2 actors each clean and tokenise several chunks, results coming back out of order;
    # dedup's band tasks run on them too.
    monkeypatch.setattr(pipeline, "CHUNK_DOCS", 3)
    monkeypatch.setattr(dedup, "ENGINE_MIN_DOCS", 0)
    monkeypatch.setattr(prepare_module, "ENCODE_DOCS", 3)  # the same for tokenising
    # Different cache directories: nothing of the path (the temporary one included) may reach the files.
    local_cfg = _replace(tiny_config(tiny_corpus, tmp_path / "local"), workers=2)
    ray_cfg = _replace(local_cfg, engine="ray", cache_dir=str(tmp_path / "ray_cache"))
    assert cache_key(ray_cfg) == cache_key(local_cfg)
    local = prepare(local_cfg, progress=False).dir
    # Ray resumes a local preparation killed after its fifth of 9 chunks (one worker, so the same key)
    killed = prepare_in_child(_replace(ray_cfg, engine="local", workers=1), kill_after="chunk-000004")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ray_dir = prepare(ray_cfg, progress=True).dir
    out, err = capsys.readouterr()
    assert "cleaning on Ray: 2 actors on a cluster of 2 CPUs" in out
    assert "dedup over 9 cleaned chunks (5 of 9 chunks cleaned by an earlier run)" in err
    assert ray_dir.name == cache_key(local_cfg)
    local_files, ray_files = contents(local), contents(ray_dir)
    assert sorted(ray_files) == sorted(
        ["manifest.json", "report.json", "report.png", "tokenizer.model"]
        + [f"{split}{ext}" for split in ("train", "val") for ext in (".bin", ".json", ".offsets.npy")]
    )
    assert ray_files == local_files
    # Tokenised on the actors: every training document decodes back to the text whose hash the manifest holds.
    prepared = load_prepared(ray_dir)
    starts = [*np.load(ray_dir / "train.offsets.npy"), len(prepared.train_tokens)]
    records = [r for r in ray_files["manifest.json"]["sources"]["documents"] if r["split"] == "train"]
    assert len(records) == len(starts) - 1 > 10
    for record, start, end in zip(records, starts, starts[1:]):
        text = prepared.tokenizer.decode(prepared.train_tokens[start + 1 : end])  # + 1: past the <bos>
        assert hashlib.sha256(text.encode()).hexdigest() == record["sha256"], record["id"]
    report = ray_files["report.json"]
    assert report["stages"]["normalize"]["docs_in"] == len(list(tiny_corpus.iterdir()))
    assert report["stages"]["near_dedup"]["docs_out"] == len(ray_files["manifest.json"]["sources"]["documents"])


@pytest.mark.slow  # a second process importing jaxllm and Ray
def test_command_line_joins_a_running_cluster_by_address(ray_cluster, tiny_corpus, tmp_path):
    """python -m jaxllm.data --data.engine=ray --data.ray_address=ADDRESS, in its own process."""
    argv = [
        f'--data.sources=["dir:{tiny_corpus}"]',
        f"--data.cache_dir={tmp_path}",
        "--data.engine=ray",
        f"--data.ray_address={ray_cluster}",
        "--data.val_fraction=0.15",
        "--model.vocab_size=512",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm.data", "--experiment=base", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cleaning on Ray: 2 actors on a cluster of 2 CPUs" in proc.stdout
    (prepared,) = [p for p in tmp_path.iterdir() if (p / "manifest.json").is_file()]
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert "engine" not in manifest["data"] and manifest["data"]["sources"] == [f"dir:{tiny_corpus}"]


def test_clusters_form_on_ray_actors_as_by_union_find(ray_cluster):
    """Star rounds over 2 partitions on 2 actors: a chain in random order, a star and pairs."""
    chain = np.random.default_rng(0).permutation(np.arange(3, 40, 3))
    lo = np.r_[chain[:-1], [1, 1, 1, 50, 60]]
    hi = np.r_[chain[1:], [8, 20, 44, 52, 61]]
    with cluster(ray_cluster):  # the rounds' actors are kept from round to round, released on leaving
        labels = star_components(64, lo, hi, Components(functools.partial(map_on_ray, workers=2), partitions=2))
    assert labels.tolist() == join_components(np.arange(64), lo, hi).tolist()
    assert labels[chain].tolist() == [3] * len(chain) and labels[[44, 52, 61]].tolist() == [1, 50, 60]


def test_band_tasks_on_ray_actors_verify_the_pairs_of_one_process(ray_cluster, tmp_path):
    """Dedup's band tasks, 2 partitions a band, on 2 actors that map the driver's signature file."""
    signatures, index = planted_signatures()
    path = tmp_path / "signatures"
    path.write_bytes(signatures.tobytes() + index.astype("<i8").tobytes())
    here = verified_pairs(str(path), 200, DedupConfig(), 2, in_process)
    with cluster(ray_cluster):
        on_ray = verified_pairs(str(path), 200, DedupConfig(), 2, functools.partial(map_on_ray, workers=2))
    assert on_ray[0].tolist() == here[0].tolist() and on_ray[1:] == here[1:] and len(here[0]) > 100


def test_missing_ray_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "jaxllm.data.engine_ray", raising=False)
    monkeypatch.delattr(jaxllm.data, "engine_ray", raising=False)
    status = run_main(data_command.main, ["--data.engine=ray", f"--data.cache_dir={tmp_path}/cache"])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err == "error: data.engine=ray needs Ray, which is not installed: pip install -e '.[ray]'\n"
    assert list(tmp_path.iterdir()) == []


def test_a_killed_actor_ends_the_preparation_with_one_line(ray_cluster, capsys):
    """An actor killed by SIGKILL (as the out-of-memory killer does) ends the map with one line and exit status 1,
    not Ray's traceback; the next map gets new actors."""

    def command(argv):
        return len(list(map_on_ray(range(8), _make_kill_self_at_third, workers=2)))

    assert run_main(command, []) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "error: data preparation stopped: an actor of the Ray engine died (killed, out of memory, or its node lost: "
        "fewer --data.workers use less); rerun the same command to resume from the chunks already finished"
    )
    assert list(map_on_ray(range(3), _make_kill_self_at_third, workers=2)) == [0, 1, 2]  # new actors serve it
