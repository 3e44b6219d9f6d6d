"""Run directories and prepared data on gs://, against a local GCS emulator behind a fault-injecting proxy
(jaxllm.bench.gcs_emulator): a run there logs the losses of the same run on local disk, resumes exactly from it, is
read back by the readers, and loses nothing when storage requests fail for a while; data prepared there, after a
failure midway, has the bytes of a local preparation and trains as it does."""

import dataclasses
import json

import fsspec
import jax
import numpy as np
import pytest
from etils import epath
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxllm import storage
from jaxllm.bench.gcs_emulator import Emulator, Fault, FaultProxy, client_env, kind
from jaxllm.config import ConfigError
from jaxllm.data import units
from jaxllm.data.prepare import cache_key, prepare
from jaxllm.eval import lineage
from jaxllm.train import checkpoint, provenance
from jaxllm.train.checkpoint import load_run
from jaxllm.train.loop import run
from tests.conftest import tiny_config
from tests.prepared_files import contents

BUCKET = "jaxllm-test"


@pytest.fixture(scope="module")
def gcs():
    """The emulator and the proxy in front of it, every client of this process pointed at the proxy."""
    emulator = Emulator(BUCKET)
    proxy = FaultProxy(emulator.endpoint)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in client_env(proxy.endpoint).items():
            mp.setenv(k, v)
        mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})  # fsspec read FSSPEC_GCS_TOKEN when imported
        yield proxy
    proxy.stop()
    emulator.stop()


def _losses(records: list[dict]) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records if "loss" in r or "val_loss" in r]


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in storage.path(run_dir).joinpath("metrics.jsonl").read_text().splitlines()]


def _steps(run_dir) -> list[int]:
    return sorted(int(p.name) for p in storage.path(run_dir).joinpath("checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def local_run(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs")
    cfg = tiny_config(tiny_corpus, root / "cache", keep_checkpoints=5)
    run(cfg, root / "run", progress=False)
    return cfg, root / "run"


def test_request_kinds():
    assert kind("POST", "/upload/storage/v1/b/b/o?uploadType=media&name=x") == "upload"
    assert kind("GET", "/storage/v1/b/b/o/x%2Fy?alt=media") == "download"
    assert kind("GET", "/storage/v1/b/b/o?prefix=x/") == "list"
    assert kind("GET", "/storage/v1/b/b/o/x") == "metadata"
    assert kind("DELETE", "/storage/v1/b/b/o/x") == "delete"


# one of each kind of transient failure, spread over the resumed run (a retry is the next request of its kind)
FAULTS = (
    ("upload", 9, "503"),
    ("upload", 13, "drop"),
    ("download", 5, "429"),
    ("list", 4, "503"),
    ("metadata", 7, "503"),
)


@pytest.mark.slow
def test_a_gs_run_equals_the_local_run_resumes_exactly_through_faults_and_is_read_back(gcs, local_run):
    cfg, local = local_run
    remote = f"gs://{BUCKET}/runs/same"
    run(cfg, remote, progress=False)
    assert _losses(_records(remote)) == _losses(_records(local))
    names = {p.name for p in epath.Path(remote).iterdir()}
    assert {"checkpoints", "config.json", "metrics.jsonl", "goodput.jsonl", "loss.png"} <= names
    assert _steps(remote) == [4, 8]
    events = EventAccumulator(remote, size_guidance={"scalars": 0})  # TensorBoard reads gs:// through fsspec
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(r["step"], np.float32(r["loss"])) for r in _records(local) if "loss" in r]
    # interrupted after the step-4 checkpoint: the later one and its log lines never reached the bucket
    epath.Path(remote, "checkpoints", "8").rmtree()  # through the client Orbax uses, whose listings it caches
    kept = [json.dumps(r) for r in _records(remote) if r["step"] <= 4]
    epath.Path(remote, "metrics.jsonl").write_text("\n".join(kept) + "\n")
    gcs.arm([Fault(*f, limit=1) for f in FAULTS])
    try:
        run(cfg, remote, progress=False)
        injected, retries = gcs.injected(), gcs.retries
    finally:
        gcs.arm([])
    assert injected == {f"{k} {action}": 1 for k, _, action in FAULTS}
    assert 0 < retries <= len(FAULTS)  # failed requests were tried again (a few differ from the failed one)
    # nothing lost: every logged loss and evaluation as uninterrupted, every checkpoint there
    assert _losses(_records(remote)) == _losses(_records(local)) and _steps(remote) == [4, 8]
    starts = [r for r in map(json.loads, epath.Path(remote, "goodput.jsonl").read_text().splitlines())]
    assert [r["step"] for r in starts if "attempt_start" in r] == [0, 4]  # the first attempt's log continued
    # the readers: load_run (generate, evaluate, export, serve) and the lineage (inspect, the model card)
    there, here = load_run(remote), load_run(local)
    assert there.step == here.step == 8
    assert jax.tree.all(
        jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), there.params, here.params)
    )
    assert there.tokenizer.encode("def f(x):") == here.tokenizer.encode("def f(x):")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), here.params)
    started = checkpoint.restore_latest_params(remote, here.saved.model, abstract)  # --train.init_from=gs://...
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), started, here.params))
    links = lineage.links(remote)
    assert [(str(link.run_dir), link.step) for link in links] == [(remote, 8)]
    assert links[0].figures["val_loss"] == _records(local)[-1]["val_loss"]


def test_bad_gs_run_dirs_are_one_line_errors(gcs, monkeypatch):
    with pytest.raises(ConfigError, match=r"gs://no-such-bucket/x cannot be written .*check the bucket's name"):
        storage.check_writable("gs://no-such-bucket/x")
    with pytest.raises(ConfigError, match=r"only local paths and gs://"):
        storage.path("s3://bucket/x")
    monkeypatch.setattr(storage.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"gs://b/x: gs:// paths need gcsfs: pip install -e '.\[gcs\]'"):
        storage.path("gs://b/x")


# a transient failure on each path of prepared data: an upload gcsfs retries, a download that storage retries
PREPARE_FAULTS = (("upload", 3, "503"), ("download", 2, "drop"))


def _cached_in(cfg, cache_dir: str):
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=cache_dir))


@pytest.mark.slow
def test_data_prepared_on_gs_after_a_failure_equals_a_local_preparation_and_a_run_trains_on_it(
    gcs, tiny_corpus, tmp_path, monkeypatch, capsys
):
    short = {"steps": 2, "log_every": 1, "eval_every": 2, "checkpoint_every": 2, "sample_tokens": 1}  # compiles least
    cfg = tiny_config(tiny_corpus, tmp_path / "cache", **short)
    here = prepare(cfg, progress=False).dir  # the same data prepared locally
    key = cache_key(cfg)
    remote = _cached_in(cfg, f"gs://{BUCKET}/prepared")
    final, work = epath.Path(f"gs://{BUCKET}/prepared/{key}"), epath.Path(f"gs://{BUCKET}/prepared/.{key}.work")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "host1"))  # where a host keeps its copy
    publish = units.Units.publish

    def publish_then_fail(self, name, *objects):
        marker = publish(self, name, *objects)
        if name == "train-000000":  # the training split's tokens (one chunk)
            raise RuntimeError("failed after train-000000")
        return marker

    monkeypatch.setattr(units.Units, "publish", publish_then_fail)
    with pytest.raises(RuntimeError, match="failed after train-000000"):
        prepare(remote, progress=False)
    assert not final.exists()  # no manifest, nothing else: nothing a reader would trust
    tokenized = sorted(p.name for p in (work / "tokenize").iterdir())
    assert tokenized == ["tokenizer", "tokenizer.done", "train-000000", "train-000000.done"]
    monkeypatch.setattr(units.Units, "publish", publish)
    monkeypatch.setattr(storage, "RETRY_S", 0.1)
    capsys.readouterr()
    gcs.arm([Fault(*f, limit=1) for f in PREPARE_FAULTS])  # the rerun goes through transient failures
    try:
        prepared = prepare(remote, progress=True)
        injected = gcs.injected()
    finally:
        gcs.arm([])
    assert injected == {f"{k} {action}": 1 for k, _, action in PREPARE_FAULTS}
    assert "train: 1 tokenised chunks were published by an earlier run" in capsys.readouterr().out
    assert not work.exists()
    assert contents(final) == contents(here)  # published byte for byte as the local preparation
    assert contents(prepared.dir) == contents(here)  # and this host's copy, which it reads
    # another host finds the manifest, downloads and checks the data, and trains on it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "host2"))
    run(remote, tmp_path / "run", progress=False)
    assert [r["step"] for r in _records(tmp_path / "run") if "loss" in r] == [1, 2]
    assert lineage.links(tmp_path / "run")[0].provenance["data"]["hash"] == provenance.data_card(here)["hash"]
    assert contents(next((tmp_path / "host2").rglob("manifest.json")).parent) == contents(here)
    # a shard damaged in the bucket is refused, and no copy of it is trusted
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "host3"))
    (final / "val.bin").write_bytes(b"damaged")
    message = rf"^{final}/val.bin does not match the sha256 in its manifest.json .*: delete {final} and rerun"
    with pytest.raises(ConfigError, match=message):
        prepare(remote, progress=False)
    assert not list((tmp_path / "host3").rglob("manifest.json"))


def test_publishing_a_directory_twice_keeps_the_first(gcs, tmp_path):
    dest = f"gs://{BUCKET}/published"
    for n in (1, 2):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "manifest.json").write_text(f"manifest {n}")
        (tmp_path / str(n) / "data.bin").write_bytes(bytes([n]) * 3)
    assert storage.publish_directory(tmp_path / "1", dest, "manifest.json")
    assert not storage.publish_directory(tmp_path / "2", dest, "manifest.json")  # a second process, later
    assert {p.name: p.read_bytes() for p in epath.Path(dest).iterdir()} == {
        "data.bin": b"\x01\x01\x01",
        "manifest.json": b"manifest 1",
    }


def test_bad_data_cache_dirs_are_one_line_errors(gcs, tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, tmp_path)
    with pytest.raises(ConfigError, match=r"^--data.cache_dir=gs://no-such-bucket/prepared cannot be written"):
        prepare(_cached_in(cfg, "gs://no-such-bucket/prepared"), progress=False)
    with pytest.raises(ConfigError, match=r"^s3://b/prepared: only local paths and gs://bucket/... are supported"):
        prepare(_cached_in(cfg, "s3://b/prepared"), progress=False)
