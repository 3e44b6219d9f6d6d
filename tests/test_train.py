"""End to end: the train command on a tiny config, resume, refusal of a mismatched run, bad input."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxllm.config import ConfigError, replace
from jaxllm.train.loop import run
from tests.conftest import tiny_config


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = tiny_config(tiny_corpus, root / "cache", steps=12, keep_checkpoints=5)
    summary = run(cfg, root / "run", progress=False)
    return cfg, root / "run", summary


@pytest.mark.slow
def test_train_end_to_end_writes_everything(finished_run):
    cfg, run_dir, summary = finished_run
    assert summary["step"] == 12 and np.isfinite(summary["val_loss"]) and 0 < summary["val_bpb"] < 20
    records = _records(run_dir)
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [2, 4, 6, 8, 10, 12]
    assert all({"step", "loss", "lr", "tokens_per_s"} <= r.keys() for r in records if "loss" in r)
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12] and evals[-1]["val_loss"] == summary["val_loss"]
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert json.loads((run_dir / "config.json").read_text())["model"]["n_layer"] == 2
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12]
    assert isinstance(summary["sample"], str)


@pytest.mark.slow
def test_second_run_says_complete_and_changes_nothing(finished_run, capsys):
    cfg, run_dir, summary = finished_run
    before = (run_dir / "metrics.jsonl").read_text()
    again = run(cfg, run_dir)
    assert "run already complete" in capsys.readouterr().out
    assert again["val_loss"] == summary["val_loss"] and (run_dir / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_resume_equals_uninterrupted(finished_run, tmp_path):
    cfg, run_dir, _ = finished_run
    # Interrupted after the step-4 checkpoint: later checkpoints and log lines never happened.
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    for step in (8, 12):
        shutil.rmtree(resumed / "checkpoints" / str(step))
    (resumed / "checkpoints" / "8.orbax-checkpoint-tmp").mkdir()  # a save killed midway is ignored
    kept = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 4]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    run(cfg, resumed, progress=False)
    losses = lambda d: [(r["step"], r.get("loss"), r.get("val_loss")) for r in _records(d)]  # noqa: E731
    assert losses(resumed) == losses(run_dir)


@pytest.mark.slow
def test_mismatched_config_is_refused_untouched(finished_run):
    cfg, run_dir, _ = finished_run
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with pytest.raises(ConfigError, match=r"different config \(model.n_layer, optim.lr differ\)"):
        run(replace(cfg, model=replace(cfg.model, n_layer=3), optim=replace(cfg.optim, lr=0.5)), run_dir)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_vocab_larger_than_corpus_allows(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, tmp_path / "cache")
    with pytest.raises(ConfigError, match="model.vocab_size=60000 is larger than this corpus supports"):
        run(replace(cfg, model=replace(cfg.model, vocab_size=60000)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # no half-prepared data left behind


def test_run_dir_that_is_a_file(tiny_corpus, tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        run(tiny_config(tiny_corpus, tmp_path / "cache"), tmp_path / "run")


@pytest.mark.slow
def test_train_command_line(tiny_corpus, tmp_path):
    """The real command with overrides, as a user runs it."""
    exp = tmp_path / "tiny.py"
    cfg = tiny_config(tiny_corpus, tmp_path / "cache", steps=4)
    exp.write_text(
        f"from jaxllm.config import *\nfrom jaxllm.config.clean import *\ndef config():\n    return {cfg!r}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxllm.train",
            f"--experiment={exp}",
            "--train.steps=6",
            f"--run_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "step 6/6" in out and "tok/s" in out and "MFU" in out and "ETA" in out
    assert "final: val_loss" in out and "val_bpb" in out and "checkpoint:" in out and "sample:" in out


@pytest.mark.slow
def test_resuming_with_more_steps_moves_the_schedules_end_continuously(finished_run, tmp_path):
    """From the step-8 checkpoint of a 12-step run (warmup 2), resumed to 16 steps: the cosine's progress at step 8,
    (8 - 2) / (12 - 2) = 0.6, runs on linearly to 1 at step 16 instead of jumping to a 16-step schedule's."""
    cfg, run_dir, _ = finished_run
    longer = tmp_path / "longer"
    shutil.copytree(run_dir, longer)
    shutil.rmtree(longer / "checkpoints" / "12")
    kept = [line for line in (longer / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 8]
    (longer / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    result = run(replace(cfg, train=replace(cfg.train, steps=16)), longer, progress=False)
    assert result["step"] == 16
    logged = {r["step"]: r for r in _records(longer) if "lr" in r and r["step"] > 8}
    for done in (10, 12, 14, 16):  # a record's rate is that of its last update, made at step done - 1
        progress = 0.6 + 0.4 * (done - 1 - 8) / 8
        expected = cfg.optim.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))
        np.testing.assert_allclose(logged[done]["lr"], expected, rtol=1e-5)
        assert logged[done]["end"] == 16
