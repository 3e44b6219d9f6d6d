"""Preemption with real signals on a real `python -m jaxllm.train` process: SIGTERM (or Ctrl-C's SIGINT) mid-run
stops it after the current step with a committed checkpoint and exit status 75, and rerunning the command resumes
to the losses of an uninterrupted run; kill -9 while asynchronous saves are being written leaves a checkpoint that
resumes exactly. Also: time-based saves, and keep-every-K beside keep-last-N."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from jaxllm.config import replace
from jaxllm.train.loop import run
from jaxllm.train.preemption import EXIT_PREEMPTED
from tests.conftest import tiny_config

STEPS = 400  # long enough that a signal sent at step 20 lands mid-run on any machine


def _losses(run_dir) -> dict[int, float]:
    """step -> loss of every logged step (a resumed run logs each step once: it saved where it stopped)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _accounts(run_dir) -> list[dict]:
    """goodput.jsonl's records: each attempt's start, then its account if it ended by itself."""
    return [json.loads(line) for line in (run_dir / "goodput.jsonl").read_text().splitlines()]


def _steps(run_dir) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory):
    """The experiment file, and the losses of the same run left alone (in this process)."""
    root = tmp_path_factory.mktemp("preempt")
    cfg = tiny_config(
        tiny_corpus, root / "cache", steps=STEPS, log_every=1, eval_every=STEPS, checkpoint_every=STEPS, sample_tokens=2
    )
    run(cfg, root / "alone", progress=False)
    experiment = root / "tiny_preempt.py"
    experiment.write_text(
        "import json\nfrom jaxllm.config import config_from_dict\n\n"
        f"def config():\n    return config_from_dict(json.loads({cfg.to_json()!r}))\n"
    )
    return experiment, _losses(root / "alone"), cfg


def _start(experiment, run_dir, *overrides) -> subprocess.Popen:
    command = [sys.executable, "-m", "jaxllm.train", f"--experiment={experiment}", f"--run_dir={run_dir}", *overrides]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(process: subprocess.Popen, step: int) -> None:
    for line in process.stdout:
        if line.startswith(f"step {step}/"):
            return
    pytest.fail(f"the run ended before step {step}: {process.wait()}, {process.stderr.read()[-2000:]}")


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_exits_75_and_the_rerun_resumes_exactly(setup, tmp_path, sig):
    experiment, alone, _ = setup
    run_dir = tmp_path / "run"
    process = _start(experiment, run_dir)
    _wait_for_step(process, 20)
    process.send_signal(sig)
    status, err = _finish(process)
    assert status == EXIT_PREEMPTED, err[-2000:]
    stopped = _steps(run_dir)
    assert len(stopped) == 1 and 20 <= stopped[0] < STEPS, stopped  # saved where it stopped, mid-run
    assert f"stopped at step {stopped[0]} of {STEPS} on {sig.name}" in err.splitlines()[-1]
    assert sorted(_losses(run_dir)) == list(range(1, stopped[0] + 1))
    if sig == signal.SIGINT:
        return  # the same stop as SIGTERM's from here on: its resume is checked once, below

    status, err = _finish(_start(experiment, run_dir))
    assert status == 0, err[-2000:]
    assert _losses(run_dir) == alone
    # two attempts, each with its account; nothing lost to the restart: the first saved where it stopped
    starts, first, restart, second = _accounts(run_dir)
    assert (starts["step"], first["step"], restart["step"], second["step"]) == (0, stopped[0], stopped[0], STEPS)
    assert second["account"]["lost_steps"] == 0 and second["account"]["lost_s"] == 0
    for account in (first["account"], second["account"]):
        parts = sum(account[k] for k in ("startup_s", "compile_s", "data_s", "steps_s", "eval_s", "checkpoint_s"))
        assert abs(parts - account["wall_s"]) < 1e-6 and 0 < account["goodput"] < 1


@pytest.mark.slow
def test_kill_9_during_asynchronous_saves_leaves_a_checkpoint_that_resumes_exactly(setup, tmp_path):
    experiment, alone, _ = setup
    run_dir = tmp_path / "run"
    process = _start(experiment, run_dir, "--train.checkpoint_every=1")  # a save in flight at almost every moment
    _wait_for_step(process, 30)
    process.kill()
    process.wait()
    left = _steps(run_dir)
    assert left, "no committed checkpoint"
    logged = max(_losses(run_dir))
    status, err = _finish(_start(experiment, run_dir))
    assert status == 0, err[-2000:]
    # steps logged after the checkpoint the rerun resumed from were logged again: the later record wins
    assert _losses(run_dir) == alone
    # the killed attempt wrote no account; the rerun counts what it redid as lost to the restart
    killed, restart, account = _accounts(run_dir)
    assert "attempt_start" in killed and "attempt_start" in restart
    assert account["account"]["lost_steps"] == logged - restart["step"] >= 0


def test_time_based_saves_and_keep_every_beside_the_latest(setup, tmp_path):
    """checkpoint_minutes=1e-9: a save at every log step (each 3rd), beside none by steps; keep 2 latest plus each
    multiple of 9."""
    _, _, cfg = setup
    cfg = replace(
        cfg,
        train=replace(
            cfg.train,
            steps=20,
            log_every=3,
            checkpoint_every=1000,
            checkpoint_minutes=1e-9,
            keep_every=9,
            eval_every=20,
        ),
    )
    run(cfg, tmp_path / "run", progress=False)
    assert _steps(tmp_path / "run") == [9, 18, 20]  # saved at 3, 6, ..., 18 and the end; 15 and earlier 3s dropped
