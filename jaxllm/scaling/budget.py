"""Planning one run to a budget: which shape, how many steps, and the loss and time that buys, by a fitted law.

For: the arithmetic of a budgeted run (`--train.budget=10m` or `--train.budget_flops=1e14`): given measured
step times of candidate shapes (jaxllm.train.budget measures them), the steps each can afford within the budget,
the final loss the law predicts for it, and the best; and finding the law fitted for a run's setup. Not for:
measuring (jaxllm.train.budget) or fitting a law (jaxllm.scaling.sweep). Imports no JAX.

The law is L(N, D) = E + A/N^alpha + B/D^beta fitted by the IsoFLOP sweep of the same setup: everything that
shapes the loss but the model's size and the run's length (data, tokenizer, context, batch, optimizer, head
size; `setup_key`). A law is looked up by that key, so a changed setup never plans with a stale law.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
from dataclasses import dataclass

import numpy as np

from jaxllm import machine
from jaxllm.config import EXPERIMENTS_DIR, Config, ConfigError, ModelConfig
from jaxllm.data.prepare import ENGINE_SETTINGS
from jaxllm.model.accounting import flops_per_token, param_count
from jaxllm.scaling.laws import BESIROGLU_2024, LossLaw, size_model, smallest_model

SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "n_kv_head", "mlp_hidden")
# how a model is run, not what it learns: left out of the setup a law is fitted for
RUN_FIELDS = ("kernels", "compute_dtype", "remat", "scan_layers")
MIN_STEPS = 30  # fewer and the schedule, not the model, decides the loss (the sweep's floor too)
CHECKPOINT_S = 0.5  # an intermediate save of a small model (async; the next save waits for it)
MEMORY_HEADROOM = 0.9  # of a device's memory a plan may fill


def setup(cfg: Config) -> dict:
    """The settings a fitted law holds for: all that shapes the loss except the model's size and the run's length."""
    m = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in SHAPE_FIELDS + RUN_FIELDS}
    m |= {
        "head_dim": cfg.model.head_dim,
        "kv_group": cfg.model.n_head // cfg.model.kv_heads,
        "mlp_ratio": cfg.model.hidden / cfg.model.n_embd,
    }
    return {
        "model": m,
        "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("cache_dir", *ENGINE_SETTINGS)},
        "optim": dataclasses.asdict(cfg.optim),
        "train": {"batch_size": cfg.train.batch_size, "eval_batches": cfg.train.eval_batches},
    }


def setup_key(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(setup(cfg), sort_keys=True).encode()).hexdigest()[:12]


def law_dirs() -> list[pathlib.Path]:
    """Where laws are looked up by setup key: fitted on this kind of machine first, then those shipped."""
    return [machine.cache_dir() / "laws", EXPERIMENTS_DIR / "laws"]


@dataclass(frozen=True)
class FoundLaw:
    law: LossLaw
    source: str  # where it came from, for the plan's summary
    fitted: bool  # fitted on this setup, so its losses are ours; False: Hoffmann et al.'s data
    top_flops: float | None = None  # the largest budget its sweep trained: beyond it the law extrapolates


def read_law_file(path: pathlib.Path) -> tuple[LossLaw, str, float | None]:
    """(law, setup key, largest budget swept) from a sweep's law.json or scaling.json, or its output folder."""
    if path.is_dir():
        path = path / "law.json" if (path / "law.json").is_file() else path / "scaling.json"
    try:
        data = json.loads(path.read_text())
        law = data["loss_law"] if "loss_law" in data else data["fits"]["loss_law"]
        top = max(map(float, data["budgets"])) if data.get("budgets") else None
        return LossLaw(**{k: float(law[k]) for k in ("E", "A", "B", "alpha", "beta")}), data.get("setup_key", ""), top
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"--train.law={path}: not a fitted law ({type(e).__name__}: {e}); give a sweep's law.json, "
            "scaling.json or output folder (python -m jaxllm.scaling)"
        ) from None


def find_law(cfg: Config) -> FoundLaw:
    """train.law if given; else the law saved for this setup's key; else Besiroglu et al.'s re-fit of Chinchilla,
    whose losses are on another corpus and tokenizer (its shapes and steps are still a sensible plan)."""
    key = setup_key(cfg)
    if cfg.train.law:
        law, law_key, top = read_law_file(pathlib.Path(cfg.train.law))
        note = "" if law_key == key else f" (fitted for setup {law_key or 'unknown'}, this run's is {key})"
        return FoundLaw(law, f"{cfg.train.law}{note}", law_key == key, top)
    for folder in law_dirs():
        path = folder / f"{key}.json"
        if path.is_file():
            law, _, top = read_law_file(path)
            return FoundLaw(law, str(path), True, top)
    return FoundLaw(BESIROGLU_2024, f"Besiroglu et al. 2024 (no law fitted for setup {key})", False)


@dataclass(frozen=True)
class Measured:
    """One candidate shape as measured on this machine, with this run's batch, mesh, kernels and dtype."""

    model: ModelConfig
    step_s: float  # a train step, host-side batch assembly included
    compile_s: float  # compiling the train step, cold
    bytes_per_device: int  # parameters, optimizer state and the step's temporaries
    eval_batch_s: float = 0.0  # one held-out batch; 0 before measured (estimated as a third of a step)


@dataclass(frozen=True)
class Costs:
    """Time a run spends besides its train steps, measured or counted by the caller."""

    elapsed_s: float  # already spent at planning: start-up, data preparation, measurement
    eval_every: int
    eval_batches: int
    checkpoint_every: int
    eval_compile_s: float  # the held-out step's compilation (cached after the measurement)


def run_seconds(m: Measured, steps: int, costs: Costs) -> float:
    """Process start to the final evaluation: what the budget counts."""
    evals = (steps - 1) // costs.eval_every + 1
    saves = (steps - 1) // costs.checkpoint_every
    eval_batch_s = m.eval_batch_s or m.step_s / 3  # a forward pass is about a third of a train step
    return (
        costs.elapsed_s
        + m.compile_s
        + costs.eval_compile_s
        + steps * m.step_s
        + evals * costs.eval_batches * eval_batch_s
        + saves * CHECKPOINT_S
    )


def _last_fitting(lo: int, hi: int, fits) -> int:
    """The largest n in [lo, hi) with fits(n), by bisection: fits holds up to some n and not after (lo is taken to
    fit, hi not)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def affordable_steps(m: Measured, budget_s: float, costs: Costs) -> int:
    """The most steps whose predicted run time fits in budget_s (0 when not even MIN_STEPS do)."""
    steps = _last_fitting(0, max(1, int(budget_s / m.step_s) + 1), lambda n: run_seconds(m, n, costs) <= budget_s)
    return steps if steps >= MIN_STEPS else 0


def steps_that_fit(seconds_left: float, step_s: float, done: int, intervals: dict[int, float], final_s: float) -> int:
    """Deadline steering: the end step (after `done`, at least done + 1) whose remaining train steps, the pauses
    on their intervals ({every: seconds}: evaluations and saves, not at the end) and the final evaluation (final_s)
    fit in seconds_left."""

    def seconds(end: int) -> float:
        pauses = sum(cost * ((end - 1) // every - done // every) for every, cost in intervals.items())
        return (end - done) * step_s + pauses + final_s

    return _last_fitting(done + 1, done + 2 + max(int(seconds_left / step_s), 0), lambda n: seconds(n) <= seconds_left)


def steps_for_flops(model: ModelConfig, tokens_per_step: int, budget_flops: float) -> int:
    return round(budget_flops / (flops_per_token(model) * tokens_per_step))


@dataclass(frozen=True)
class Choice:
    model: ModelConfig
    steps: int
    loss: float  # predicted final validation loss, nats per token
    seconds: float | None  # predicted process start to final evaluation (time budgets)


def best(law: LossLaw, options: list[tuple[ModelConfig, int, float | None]], tokens_per_step: int) -> Choice | None:
    """The (model, steps, seconds) option with the lowest predicted loss; None when none has MIN_STEPS."""
    scored = [
        Choice(model, steps, law.loss(param_count(model).total, steps * tokens_per_step), seconds)
        for model, steps, seconds in options
        if steps >= MIN_STEPS
    ]
    return min(scored, key=lambda c: c.loss) if scored else None


def time_choice(law: LossLaw, measured: list[Measured], budget_s: float, costs: Costs, tokens_per_step: int):
    options = []
    for m in measured:
        steps = affordable_steps(m, budget_s, costs)
        options.append((m.model, steps, run_seconds(m, steps, costs) if steps else None))
    return best(law, options, tokens_per_step)


def candidate_shapes(model: ModelConfig, max_params: float, ratio: float = 1.5) -> list[ModelConfig]:
    """The family's shapes (jaxllm.scaling.laws.size_model) from its smallest up to max_params parameters, about
    `ratio` apart in parameter count, smallest first."""
    smallest = param_count(smallest_model(model)).total
    count = max(2, int(math.log(max_params / smallest) / math.log(ratio)) + 1)
    shapes: list[ModelConfig] = []
    for target in np.geomspace(smallest, max(max_params, smallest * ratio), count):
        shape = size_model(model, float(target))
        if shape not in shapes:
            shapes.append(shape)
    return sorted(shapes, key=lambda s: param_count(s).total)


def capped_warmup(optim, steps: int):
    """optim with its warmup capped at a tenth of the run's steps: the sweep's rule, so plans match its law."""
    return dataclasses.replace(optim, warmup_steps=min(optim.warmup_steps, steps // 10))


def apply(cfg: Config, plan: dict) -> Config:
    """cfg with a plan's shape, steps and warmup (a plan is plain JSON, see jaxllm.train.budget)."""
    model = dataclasses.replace(cfg.model, **{k: plan["model"][k] for k in SHAPE_FIELDS})
    steps = int(plan["steps"])
    return dataclasses.replace(
        cfg, model=model, optim=capped_warmup(cfg.optim, steps), train=dataclasses.replace(cfg.train, steps=steps)
    )
