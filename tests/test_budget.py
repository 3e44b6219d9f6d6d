"""Budgeted runs: durations, the setup a law holds for, the planner's arithmetic and choices, and end to end a run
planned to a FLOP budget (resume exact) and to a time budget."""

import dataclasses
import json
import lzma
import math
import pathlib
import shutil
import sys
import time

import numpy as np
import pytest

from jaxllm.bench.budget import compressor_bpb, held_out_documents, model_bpb
from jaxllm.config import ConfigError, ModelConfig, load_experiment, parse_duration, replace, validate
from jaxllm.model.accounting import flops_per_token, param_count
from jaxllm.model.scoring import sequence_logprobs
from jaxllm.scaling import budget as arithmetic
from jaxllm.scaling.laws import BESIROGLU_2024, LossLaw
from jaxllm.tokenizer import BOS
from jaxllm.train.checkpoint import load_run
from jaxllm.train.loop import run
from jaxllm.train.stage import pretraining
from tests.conftest import tiny_config
from tests.multidevice import run_worker

# a law of the shape the sweep fits on base's setup (nats per token of a 512-token vocabulary)
LAW = LossLaw(E=1.5, A=40.0, B=200.0, alpha=0.35, beta=0.3)
TOKENS_PER_STEP = 1024
COSTS = arithmetic.Costs(elapsed_s=5.0, eval_every=1000, eval_batches=32, checkpoint_every=1000, eval_compile_s=0.0)


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("90s", 90), ("2h", 7200), ("1h30m", 5400), ("1.5min", 90)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "10", "10 parsecs", "0m", "m", "-5m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ConfigError, match="--train.budget"):
        parse_duration(text)


def test_both_budgets_are_refused():
    cfg = load_experiment("base")
    with pytest.raises(ConfigError, match="give one budget"):
        validate(replace(cfg, train=replace(cfg.train, budget="10m", budget_flops=1e14)))


def test_setup_key_ignores_shape_length_and_kernels_but_not_what_the_loss_depends_on():
    base = load_experiment("base")
    key = arithmetic.setup_key(base)
    same = [
        replace(base, model=replace(base.model, n_layer=7, n_head=3, n_embd=48, kernels="reference")),
        replace(base, train=replace(base.train, steps=5, budget="", log_every=3), name="other"),
        load_experiment("scaling"),  # the sweep's experiment is base with the shape left to the sweep
        replace(base, data=replace(base.data, engine="ray", ray_address="auto", workers=1)),  # where, not what
    ]
    assert all(arithmetic.setup_key(cfg) == key for cfg in same)
    other = [
        replace(base, optim=replace(base.optim, lr=3e-3)),
        replace(base, model=replace(base.model, vocab_size=1024)),
        replace(base, model=replace(base.model, n_head=4)),  # head size 32, not 16
        replace(base, train=replace(base.train, batch_size=16)),
    ]
    assert all(arithmetic.setup_key(cfg) != key for cfg in other)


def _measured(model: ModelConfig, bytes_per_device: int = 10**6) -> arithmetic.Measured:
    """A step time like a CPU's: a fixed cost plus FLOPs at 50 GFLOP/s."""
    step_s = 2e-3 + flops_per_token(model) * TOKENS_PER_STEP / 5e10
    return arithmetic.Measured(model, step_s, compile_s=3.0, bytes_per_device=bytes_per_device)


@pytest.fixture(scope="module")
def shapes():
    return arithmetic.candidate_shapes(load_experiment("base").model, 3e7)


def test_candidates_climb_the_family_in_steps(shapes):
    counts = [param_count(s).total for s in shapes]
    assert counts == sorted(counts) and len(counts) == len(set(counts)) >= 10
    assert all(s.head_dim == 16 for s in shapes) and counts[0] == param_count(shapes[0]).total
    assert max(b / a for a, b in zip(counts, counts[1:])) < 3  # coarsest at the smallest widths: 16 to 32


def test_run_seconds_counts_compile_steps_evals_and_saves():
    m = arithmetic.Measured(ModelConfig(), step_s=0.1, compile_s=4.0, bytes_per_device=1, eval_batch_s=0.02)
    # 2,500 steps: evaluations at 1000, 2000 and the end, saves at 1000 and 2000
    expected = 5.0 + 4.0 + 2500 * 0.1 + 3 * 32 * 0.02 + 2 * arithmetic.CHECKPOINT_S
    assert arithmetic.run_seconds(m, 2500, COSTS) == pytest.approx(expected)
    steps = arithmetic.affordable_steps(m, 300.0, COSTS)
    assert arithmetic.run_seconds(m, steps, COSTS) <= 300.0 < arithmetic.run_seconds(m, steps + 1, COSTS)


def test_steering_fits_the_steps_pauses_and_final_evaluation_in_the_time_left():
    # from step 1000 at 0.125 s a step; evaluations (2 s) every 500 steps, saves (0.5 s) every 1000; the final 3 s
    fit = lambda left: arithmetic.steps_that_fit(left, 0.125, 1000, {500: 2.0, 1000: 0.5}, 3.0)  # noqa: E731
    assert fit(100.0) == 1760  # 760 steps, the evaluation at 1500, the final one: 95 + 2 + 3 s
    assert fit(140.0) == 2060  # past 2000: evaluations at 1500 and 2000, the save at 2000: 132.5 + 4 + 0.5 + 3 s
    assert fit(-5.0) == 1001  # out of time: one more step, then the final evaluation


@pytest.mark.parametrize("kind", ["time", "flops"])
def test_a_larger_budget_never_plans_a_worse_loss(shapes, kind):
    measured = [_measured(s) for s in shapes]
    losses, sizes = [], []
    for budget in [30, 60, 120, 300, 600, 1800, 3600, 7200] if kind == "time" else [1e12 * 2**k for k in range(10)]:
        if kind == "time":
            choice = arithmetic.time_choice(LAW, measured, budget, COSTS, TOKENS_PER_STEP)
            assert choice.seconds <= budget
        else:
            options = [(s, arithmetic.steps_for_flops(s, TOKENS_PER_STEP, budget), None) for s in shapes]
            choice = arithmetic.best(LAW, options, TOKENS_PER_STEP)
        losses.append(choice.loss)
        sizes.append(param_count(choice.model).total)
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # more compute buys a larger model, as the law says


def test_the_plan_fits_the_memory(shapes):
    measured = [
        _measured(s, bytes_per_device=param_count(s).total * 16)  # parameters and Adam moments in float32
        for s in shapes
    ]
    unlimited = arithmetic.time_choice(LAW, measured, 3600, COSTS, TOKENS_PER_STEP)
    limit = param_count(unlimited.model).total * 16 // 2  # the best shape does not fit
    fitting = [m if m.bytes_per_device <= limit else replace(m, step_s=math.inf) for m in measured]  # as measured
    choice = arithmetic.time_choice(LAW, fitting, 3600, COSTS, TOKENS_PER_STEP)
    assert param_count(choice.model).total * 16 <= limit and choice.loss > unlimited.loss


def test_nothing_affordable_plans_nothing(shapes):
    assert arithmetic.time_choice(LAW, [_measured(s) for s in shapes], 6.0, COSTS, TOKENS_PER_STEP) is None


def test_law_lookup_by_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = load_experiment("base")
    missing = arithmetic.find_law(replace(base, optim=replace(base.optim, lr=1.234e-3)))
    assert missing.law == BESIROGLU_2024 and not missing.fitted and "no law fitted" in missing.source
    law_file = {"setup_key": arithmetic.setup_key(base), "loss_law": LAW.__dict__}
    path = arithmetic.law_dirs()[0] / f"{arithmetic.setup_key(base)}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(law_file))
    found = arithmetic.find_law(base)
    assert found.law == LAW and found.fitted and found.source == str(path) and found.top_flops is None
    other = tmp_path / "law.json"
    other.write_text(json.dumps({**law_file, "setup_key": "0123456789ab", "budgets": [2e11, 7e12, 6e11]}))
    given = arithmetic.find_law(replace(base, train=replace(base.train, law=str(other))))
    assert given.law == LAW and not given.fitted and "fitted for setup 0123456789ab" in given.source
    assert given.top_flops == 7e12  # the largest budget swept: beyond it a plan says the law extrapolates
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a fitted law"):
        arithmetic.find_law(replace(base, train=replace(base.train, law=str(tmp_path / "bad.json"))))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def flops_run(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    cfg = tiny_config(tiny_corpus, root / "cache", budget_flops=6e9, steps=1, checkpoint_every=10)
    result = run(cfg, root / "run", progress=False)
    return cfg, root / "run", result


@pytest.mark.slow
def test_flops_budget_plans_saves_and_reports(flops_run):
    cfg, run_dir, result = flops_run
    plan = json.loads((run_dir / "plan.json").read_text())
    saved = json.loads((run_dir / "config.json").read_text())
    model = replace(cfg.model, **plan["model"])
    assert saved["train"]["steps"] == plan["steps"] == result["steps"] > 1
    assert plan["steps"] == round(6e9 / (flops_per_token(model) * 4 * 32))  # the budget spent on the chosen shape
    assert saved["model"]["n_embd"] == plan["model"]["n_embd"] and plan["params"] == result["params"]
    assert saved["optim"]["warmup_steps"] == min(2, plan["steps"] // 10)
    outcome = [r for r in _records(run_dir) if r.get("plan_vs_achieved")]
    assert len(outcome) == 1 and outcome[0]["achieved_val_loss"] == result["val_loss"]
    assert outcome[0]["planned_val_loss"] == plan["predicted"]["val_loss"] and outcome[0]["planned_s"] is None
    assert (run_dir / "plan.png").stat().st_size > 1000


@pytest.mark.slow
def test_budgeted_resume_uses_the_saved_plan_and_is_exact(flops_run, tmp_path):
    cfg, run_dir, _ = flops_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    first = min(int(p.name) for p in (resumed / "checkpoints").iterdir() if p.name.isdigit())
    for p in (resumed / "checkpoints").iterdir():
        if p.name.isdigit() and int(p.name) > first:
            shutil.rmtree(p)
    kept = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= first]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    plan = (resumed / "plan.json").read_text()
    run(cfg, resumed, progress=False)
    assert (resumed / "plan.json").read_text() == plan
    losses = lambda d: [(r["step"], r.get("loss"), r.get("val_loss")) for r in _records(d)]  # noqa: E731
    assert losses(resumed) == losses(run_dir)


@pytest.mark.slow
def test_time_budget_measures_plans_and_steers_to_its_deadline(tiny_corpus, tmp_path, monkeypatch):
    """After planning, the machine gets 3x slower (each batch costs three measured steps of sleep): the run steers
    its end to the deadline, stopping well short of the planned steps, its learning rate decayed by the end."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # measure afresh, keep the user's cache clean
    cfg = tiny_config(tiny_corpus, tmp_path / "cache", budget="40s", steps=1, eval_every=200, checkpoint_every=200)
    stages = []

    def slowed_after_planning(run_cfg, mesh, progress):
        stages.append(pretraining(run_cfg, mesh, progress))
        if len(stages) == 1:  # the one the planner measures with
            return stages[0]
        plan = json.loads((tmp_path / "run" / "plan.json").read_text())
        step_s = next(m["step_s"] for m in plan["measured"] if m["params"] == plan["params"])

        def train_batch(s, state):
            time.sleep(3 * step_s)
            return stages[-1].train_batch(s, state)

        return dataclasses.replace(stages[-1], train_batch=train_batch)

    result = run(cfg, tmp_path / "run", progress=False, make_stage=slowed_after_planning)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["fresh_measurements"] == len(plan["measured"]) >= 1  # as many as 15% of the budget allowed
    assert plan["predicted"]["seconds"] <= 45 and plan["steps"] >= arithmetic.MIN_STEPS
    cached = json.loads((tmp_path / "xdg" / "jaxllm").glob("*/throughput.json").__next__().read_text())
    assert len(cached) == len(plan["measured"])
    records = _records(tmp_path / "run")
    outcome = [r for r in records if r.get("plan_vs_achieved")][0]
    assert outcome["planned_s"] == plan["predicted"]["seconds"] and outcome["achieved_s"] > plan["planned_at_s"]
    assert outcome["planned_steps"] == plan["steps"] and outcome["achieved_steps"] == result["steps"]
    assert result["steps"] < 0.7 * plan["steps"]
    assert (tmp_path / "run" / "checkpoints" / str(result["steps"])).is_dir()
    ends = [r["end"] for r in records if "end" in r]  # the end each progress line knew: planned, then steered
    assert ends[0] == plan["steps"] and ends[-1] == result["steps"]
    # the rate decays without a jump at any steering, towards its floor (a tenth of the peak) at the end; how near
    # the last logged step comes to the floor depends on how few steps this machine fitted after the last steering
    decaying = [r["lr"] for r in records if "lr" in r and r["step"] > cfg.optim.warmup_steps]
    assert decaying == sorted(decaying, reverse=True) and decaying[-1] < 0.3 * cfg.optim.lr
    assert [r for r in records if "lr" in r][-1]["step"] == result["steps"]


def test_held_out_documents_split_at_bos_and_compressors_count_every_byte():
    tokens = np.array([BOS, 5, 6, BOS, 7, BOS, 8, 9, 10], np.uint16)
    assert [d.tolist() for d in held_out_documents(tokens, BOS)] == [[BOS, 5, 6], [BOS, 7], [BOS, 8, 9, 10]]
    texts = [b"def f(x):\n    return x\n" * 30, b"import os\n" * 7]
    xz = sum(len(lzma.compress(t, preset=9 | lzma.PRESET_EXTREME)) for t in texts)
    assert compressor_bpb(texts)["xz -9e"] == 8 * xz / sum(map(len, texts))


@pytest.mark.slow
def test_document_bits_per_byte_scores_every_token_once(flops_run):
    _, run_dir, _ = flops_run
    loaded = load_run(run_dir)
    text = "def f(x):\n    return x + 1\n"
    doc = np.array([BOS, *loaded.tokenizer.encode(text)], np.int32)
    assert len(doc) <= loaded.cfg.model.block_size  # one window: the whole document from its <bos>
    rows = {"inputs": doc[None, :-1], "targets": doc[None, 1:], "loss_mask": np.ones((1, len(doc) - 1), np.float32)}
    nats = -sequence_logprobs(loaded.graphdef, loaded.params, rows, batch=1)[0]
    bpb, n_bytes = model_bpb(run_dir, [doc])
    assert n_bytes == len(text.encode()) and bpb == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)


def worker_memory(corpus: str, cache: str) -> dict:
    """The measured bytes per device of one shape on 8 devices, replicated (data) and sharded (fsdp)."""
    from jaxllm import kernels, sharding  # noqa: PLC0415 (this half runs in its own process, on 8 devices)
    from jaxllm.train import budget  # noqa: PLC0415
    from jaxllm.train.stage import pretraining  # noqa: PLC0415

    out = {}
    for axis in ("data", "fsdp"):
        cfg = tiny_config(pathlib.Path(corpus), pathlib.Path(cache), batch_size=8)
        cfg = replace(cfg, mesh=replace(cfg.mesh, data=8 if axis == "data" else 1, fsdp=8 if axis == "fsdp" else 1))
        mesh = sharding.make_mesh(cfg)
        model, _ = kernels.resolve(cfg.model, list(mesh.devices.flat))
        run_cfg = replace(cfg, model=model)
        measure = budget.Measurer(run_cfg, mesh, pretraining(run_cfg, mesh, False), memory_limit=10**12)
        m = measure(replace(model, n_layer=2, n_embd=128, n_head=8))
        out[axis] = {"bytes": m.bytes_per_device, "step_s": m.step_s}
    return out


@pytest.mark.slow
def test_the_plan_counts_memory_per_device_of_its_mesh(tiny_corpus, tmp_path):
    out = run_worker(__file__, "memory", str(tiny_corpus), str(tmp_path / "cache"), devices=8)
    params = param_count(replace(tiny_config(tiny_corpus, tmp_path).model, n_layer=2, n_embd=128, n_head=8)).total
    state = 3 * 4 * params  # float32 parameters and two Adam moments
    assert out["data"]["bytes"] > state > out["fsdp"]["bytes"] > state / 8  # ZeRO-3 shards the state 8 ways
    assert all(math.isfinite(m["step_s"]) and m["step_s"] > 0 for m in out.values())


if __name__ == "__main__":
    print(json.dumps({"memory": worker_memory}[sys.argv[1]](*sys.argv[2:])))
