"""`python -m jaxllm.plan` and the sweep's command line: outputs, sizing and one-line errors."""

import json

import pytest

from jaxllm import plan
from jaxllm.cli import run_main
from jaxllm.config import apply_overrides, load_experiment
from jaxllm.model.accounting import param_count
from jaxllm.scaling import sweep as scaling_sweep


def plan_json(capsys, *argv: str) -> dict:
    assert run_main(plan.main, ["--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_method_side_by_side(capsys):
    assert run_main(plan.main, ["--flops=1e21"]) == 0
    table = capsys.readouterr().out
    for method in ("chinchilla-20", "approach-3", "epoch-refit"):
        assert method in table
    rows = plan_json(capsys, "--flops=1e21")["methods"]
    assert [row["loss"] is None for row in rows] == [True, False, False]
    assert all(6 * row["params"] * row["tokens"] == pytest.approx(1e21) for row in rows)


def test_hours_become_flops_and_wall_time(capsys):
    result = plan_json(capsys, "--hours=24", "--chips=256", "--peak_tflops=459", "--mfu=0.5")
    assert result["flops"] == pytest.approx(24 * 3600 * 256 * 459e12 * 0.5)
    assert all(row["wall_s"] == pytest.approx(24 * 3600) for row in result["methods"])


def test_tokens_per_s_gives_each_method_its_own_wall_time(capsys):
    rows = plan_json(capsys, "--flops=1e21", "--tokens_per_s=1e6", "--train.batch_size=512")["methods"]
    assert [row["wall_s"] for row in rows] == pytest.approx([row["tokens"] / 1e6 for row in rows])
    assert rows[0]["steps"] == pytest.approx(rows[0]["tokens"] / (512 * 128), abs=1)


def test_experiment_gets_overrides_that_build_the_planned_size(capsys):
    rows = plan_json(capsys, "--flops=3e14", "--experiment=base")["methods"]
    base = load_experiment("base")
    for row in rows:
        overrides = dict(arg[2:].split("=") for arg in row["model"]["overrides"].split())
        cfg = apply_overrides(base, overrides)
        assert param_count(cfg.model).total == row["model"]["params"]
        assert 0.5 < row["model"]["params"] / row["params"] < 2
        assert cfg.train.steps == row["model"]["steps"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--flops=abc"], "expected a positive number"),
        (["--flops=-3"], "expected a positive number"),
        (["--flops=0"], "expected a positive number"),
        ([], "exactly one budget"),
        (["--flops=1e21", "--hours=2"], "exactly one budget"),
        (["--hours=24"], "needs --peak_tflops"),
        (["--flops=1e21", "--peak_tflops=459", "--tokens_per_s=1e6"], "keep one"),
        (["--hours=1", "--peak_tflops=459", "--mfu=1.5"], "fraction"),
        (["--flops=1e10", "--experiment=base"], "smallest base model"),
    ],
)
def test_plan_errors_are_one_line_exit_2(capsys, argv, message):
    assert run_main(plan.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budgets=1e13,nope"], "expected a positive number"),
        (["--budgets=1e13,-1e13"], "expected a positive number"),
        (["--budgets=1e9"], "raise the budget"),
        (["--budgets=1e13,1e13"], "repeats"),
        (["--sizes=2"], "at least 3"),
        (["--span=0.5"], "> 1"),
    ],
)
def test_sweep_errors_are_one_line_exit_2(capsys, argv, message):
    assert run_main(scaling_sweep.main, ["--dry_run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, runs",
    [
        ([], 20),  # the default: experiments/scaling.py, 4 budgets of 5 sizes
        (["--experiment=base", "--budgets=1e14,3e14,1e15"], 15),  # the example
    ],
)
def test_sweep_grid(capsys, argv, runs):
    assert run_main(scaling_sweep.main, ["--dry_run", *argv]) == 0
    assert f"{runs} runs" in capsys.readouterr().out
