"""The pure parts of `python -m jaxllm.bench resilience`: the seeded plan of trials, where a signal aims, losses
from a log whose steps repeat after a resume, the flags, and the totals its table states."""

import json

import pytest

from jaxllm.bench.resilience import (
    differing,
    losses,
    plan_trials,
    resilience_table,
    signal_step,
    steps_needed,
    trial_counts,
)
from jaxllm.config import ConfigError


def test_the_plan_has_the_asked_signals_half_aimed_at_saves_and_follows_the_seed():
    plan = plan_trials(20, 10, seed=0)
    kinds = [(t["signal"], t["during"]) for t in plan]
    assert kinds.count(("SIGTERM", "save")) == 10 and kinds.count(("SIGTERM", "step")) == 10
    assert kinds.count(("SIGKILL", "save")) == 5 and kinds.count(("SIGKILL", "step")) == 5
    assert all(1 <= t["after_steps"] <= 30 for t in plan)
    assert plan == plan_trials(20, 10, seed=0)
    assert plan != plan_trials(20, 10, seed=1)
    assert [t["signal"] for t in plan_trials(1, 2, seed=3)].count("SIGKILL") == 2


@pytest.mark.parametrize(
    "resumed, after, during, expected",
    [
        (7, 3, "save", 10),  # 10 is a save step already
        (7, 4, "save", 15),  # 11 rounds up to the next save, 15
        (7, 3, "step", 11),  # 10 saves: the signal follows the step after it
        (0, 4, "step", 4),
        (25, 5, "save", 30),
    ],
)
def test_a_signal_aims_at_a_save_step_or_off_one(resumed, after, during, expected):
    assert signal_step(resumed, after, during, every=5) == expected


def test_the_run_is_long_enough_for_every_trial():
    assert steps_needed([{"after_steps": 3}, {"after_steps": 9}], every=5) == 3 + 5 + 9 + 5 + 5


def test_a_later_record_of_a_step_wins_and_records_without_a_loss_are_skipped():
    lines = [json.dumps(r) for r in ({"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.5}, {"step": 3, "loss": 4.25})]
    lines += ["", json.dumps({"step": 2, "loss": 4.5}), json.dumps({"step": 3, "loss": 4.0})]  # resumed from 1
    lines += [json.dumps({"step": 3, "val_loss": 4.1, "val_bpb": 3.0})]
    logged = losses(lines)
    assert logged == {1: 5.0, 2: 4.5, 3: 4.0}
    assert differing(logged, {1: 5.0, 2: 4.5, 3: 4.0, 4: 3.9}) == []
    assert differing(logged, {1: 5.0, 2: 4.5000001, 3: 4.0}) == [2]
    assert differing({**logged, 9: 1.0}, {1: 5.0, 2: 4.5, 3: 4.0}) == [9]  # a step the reference never logged


def test_flags():
    assert trial_counts({}) == (20, 10, 0)
    assert trial_counts({"trials_term": "3", "trials_kill": "0", "seed": "7"}) == (3, 0, 7)
    with pytest.raises(ConfigError, match="--trials_kill='-1': expected a whole number"):
        trial_counts({"trials_kill": "-1"})
    with pytest.raises(ConfigError, match="ask for at least one trial"):
        trial_counts({"trials_term": "0", "trials_kill": "0"})


def _row(signal: str, ok: bool, in_flight: bool) -> dict:
    return {
        "signal": signal,
        "during": "save",
        "aimed_at": 10,
        "landed_at": 10,
        "save_in_flight": in_flight,
        "status": 75 if signal == "SIGTERM" else -9,
        "resumed_from": 10 if signal == "SIGTERM" else 5,
        "losses_checked": 20,
        "ok": ok,
    }


def test_the_table_states_the_totals():
    overhead = {
        "model": "gpt2 4 x 128, vocab 512",
        "tokens_per_step": 1024,
        "state_mib": 10.0,
        "step_s": 0.1,
        "blocking_s": 0.05,
        "commit_s": 0.3,
        "checkpoint_every": 1000,
        "window_ratio": 1.01,
        "window_ratio_range": [1.0, 1.02],
        "window": 100,
        "rounds": 3,
        "overhead_blocking": 0.0005,
        "overhead_window": 0.001,
    }
    result = {
        "preemption": {
            "config": {"n_layer": 2, "n_embd": 32},
            "steps": 80,
            "checkpoint_every": 5,
            "seed": 0,
            "mode": "one run directory",
            "wall_s": 40.0,
            "trials": [_row("SIGTERM", True, True), _row("SIGTERM", False, False), _row("SIGKILL", True, True)],
            "final_equal": True,
        },
        "overhead": {"base": overhead},
    }
    table = resilience_table(result)
    assert "uninterrupted run's losses: 2/3 (SIGTERM 1/2 exiting 75" in table
    assert "kill -9 1/1); saves in flight at the signal: 2;" in table
    assert "| 0.05% | 0.10% |" in table
