"""Goodput accounts: an attempt's parts add up to its wall time, lost steps are what the previous attempt computed
past the checkpoint a restart resumes from, and a run's goodput sums its attempts, killed ones included."""

from __future__ import annotations

import pytest

from jaxllm.train import goodput

TOKENS = 100  # tokens a step


def test_an_attempts_parts_add_up_and_redone_steps_count_as_lost():
    clock = iter([50.0]).__next__
    account = goodput.Goodput(clock, from_step=10, lost_steps=4, lost_s=2.0)
    for part, seconds in (("compile", 3.0), ("data", 1.0), ("steps", 30.0), ("eval", 4.0), ("checkpoint", 2.0)):
        account.seconds[part] += seconds
    record = account.record(to_step=40)
    assert record["steps_s"] == 28.0 and record["lost_s"] == 2.0  # 2 s of the 30 redid lost work
    assert record["startup_s"] == 50.0 - (3 + 1 + 28 + 2 + 4 + 2)
    assert record["goodput"] == 28.0 / 50.0
    assert (record["from_step"], record["to_step"], record["lost_steps"]) == (10, 40, 4)


def _progress(step: int, tokens_per_s: float, time_s: float) -> dict:
    return {"step": step, "loss": 1.0, "tokens_per_s": tokens_per_s, "time_s": time_s}


# attempt 1: steps 1-6 at 50 tokens/s (2 s a step), killed after logging step 6; its last checkpoint was step 4.
# attempt 2: resumed from 4, stopped on a signal at step 8 (account written); attempt 3: from 8 to 10.
METRICS = [_progress(s, 50.0, 10.0 + 2 * s) for s in range(1, 7)] + [_progress(s, 100.0, 0.0) for s in range(5, 11)]
STARTS = [
    {"step": 0, "attempt_start": 1.0, "metrics_line": 0},
    {"step": 4, "attempt_start": 2.0, "metrics_line": 6},
    {"step": 8, "account": {"wall_s": 30.0, "steps_s": 8.0, "lost_s": 2.0}},
    {"step": 8, "attempt_start": 3.0, "metrics_line": 10},
    {"step": 10, "account": {"wall_s": 20.0, "steps_s": 2.0, "lost_s": 0.0}},
]


def test_lost_steps_are_those_logged_past_the_checkpoint_resumed_from():
    assert goodput.lost_to_restart(STARTS[:1], METRICS[:6], 4, TOKENS) == (2, 4.0)  # steps 5 and 6 at 2 s
    assert goodput.lost_to_restart(STARTS[:1], METRICS[:6], 6, TOKENS) == (0, 0.0)
    assert goodput.lost_to_restart([], [], 4, TOKENS) == (0, 0.0)


def test_a_runs_goodput_sums_its_attempts_counting_a_killed_one_by_its_log():
    run = goodput.run_goodput(STARTS, METRICS, TOKENS)
    # the killed attempt: wall = its last record's time (22 s); productive = the 4 steps it kept at 2 s each
    assert run["attempts"] == 3 and run["restarts"] == 2
    assert run["wall_s"] == 22.0 + 30.0 + 20.0
    assert run["productive_s"] == 8.0 + 8.0 + 2.0
    assert run["lost_s"] == 2.0
    assert run["goodput"] == pytest.approx(18.0 / 72.0)
