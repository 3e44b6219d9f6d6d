"""Budgeted runs: measure this machine, plan the shape and steps that the law says reach the lowest loss within the
budget, and save the plan with the run (jaxllm.train.plan_report sets it against what was achieved).

    python -m jaxllm.train --experiment=base                      # base's budget: 10 minutes of this machine
    python -m jaxllm.train --experiment=base --train.budget=30m   # or --train.budget_flops=1e14

A time budget counts wall time from process start to the final evaluation, data preparation included. The plan
measures what it needs on the mesh it will train on: for candidate shapes of the experiment's family, a cold
compile of the real train step, its memory per device, and its step time on real batches; then the held-out
step of the chosen one. Measurements are kept per machine (jaxllm.machine.cache_dir()/throughput.json) so a
second run plans in a moment. The plan (plan.json in the run directory) fixes the shape, steps and warmup; a resumed
run reads it instead of planning again, so resume stays exact. The arithmetic is jaxllm.scaling.budget's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxllm import kernels, machine, sharding
from jaxllm.config import Config, ConfigError, parse_duration, replace
from jaxllm.kernels import probe
from jaxllm.model.accounting import flops_per_token, param_count
from jaxllm.scaling import budget as arithmetic
from jaxllm.scaling.laws import smallest_model
from jaxllm.train import step as step_lib
from jaxllm.train.metrics import clock_from
from jaxllm.train.plan_report import summary
from jaxllm.train.stage import pretraining

PLAN_FILE = "plan.json"
MEASURE_S = 0.5  # timed steps per candidate: at least this long, and at least MEASURE_STEPS steps
MEASURE_STEPS = 5
MAX_PARAMS_FACTOR = 1e4  # candidates reach this many times the family's smallest model
STARTUP_S = 3.0  # after planning: the stage read again, the state initialised (a small compile), first batches
MEASURING_SHARE = 0.15  # of a time budget that measuring new shapes may take; then the best measured is chosen


def budgeted(cfg: Config) -> bool:
    return bool(cfg.train.budget or cfg.train.budget_flops)


def load_plan(run_dir: pathlib.Path) -> dict | None:
    path = pathlib.Path(run_dir) / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_plan(run_dir: pathlib.Path, plan: dict) -> None:
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f"{PLAN_FILE}.tmp"
        tmp.write_text(json.dumps(plan, indent=2))
        tmp.replace(run_dir / PLAN_FILE)


def device_memory(mesh) -> int:
    """Bytes one device may hold: the accelerator's limit, or on a CPU the machine's memory over its devices."""
    stats = mesh.devices.flat[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // len(jax.local_devices())


class Measurer:
    """Measures candidate shapes for one run (its batch, mesh, kernels and dtype), through a per-machine cache.
    run_cfg: the run's config with kernels and compute dtype resolved; stage: its pretraining stage."""

    def __init__(self, run_cfg: Config, mesh, stage, memory_limit: int):
        self.cfg, self.mesh, self.stage, self.memory_limit = run_cfg, mesh, stage, memory_limit
        self.path = machine.cache_dir() / "throughput.json"
        self.multi = jax.process_count() > 1  # every process measures, and all use process 0's figures
        device = mesh.devices.flat[0]
        self.context = (
            f"jax {jax.__version__} | {device.platform} {device.device_kind} | mesh {dict(mesh.shape)} | "
            f"{run_cfg.model.kernels} {run_cfg.model.compute_dtype} remat {run_cfg.model.remat} | "
            f"setup {arithmetic.setup_key(run_cfg)}"
        )
        self.measured: dict[str, arithmetic.Measured] = {}
        self.fresh = 0  # measured now rather than read from the cache

    def _key(self, model) -> str:
        return f"{self.context} | " + " ".join(f"{k}={getattr(model, k)}" for k in arithmetic.SHAPE_FIELDS)

    def _cache(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _store(self, key: str, m: arithmetic.Measured) -> None:
        if self.multi:
            return
        cache = self._cache()
        cache[key] = {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name != "model"}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"throughput.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only cache only costs the next run its measurements

    def known(self, model) -> bool:
        """Measured already, here or in the cache: asking costs nothing."""
        key = self._key(model)
        return key in self.measured or (not self.multi and key in self._cache())

    def __call__(self, model, with_eval: bool = False) -> arithmetic.Measured:
        key = self._key(model)
        m = self.measured.get(key)
        if m is None and not self.multi:
            stored = self._cache().get(key)
            if stored is not None:
                m = arithmetic.Measured(model=model, **stored)
        if m is None or (with_eval and not m.eval_batch_s):
            self.fresh += m is None
            m = self._measure(model, with_eval, m)
            self._store(key, m)
        self.measured[key] = m
        return m

    def _measure(self, model, with_eval: bool, known: arithmetic.Measured | None) -> arithmetic.Measured:
        cfg = replace(self.cfg, model=model)
        trainer, abstract_state = step_lib.make_trainer(cfg, self.mesh)
        with jax.set_mesh(self.mesh):
            if known is None:
                # cold, like the run's own compile: with the cache off, this one leaves nothing in it
                cache_on = jax.config.jax_enable_compilation_cache
                jax.config.update("jax_enable_compilation_cache", False)
                try:
                    t0 = time.perf_counter()
                    compiled = trainer.jit_train_step().lower(abstract_state, self.stage.batch_shapes).compile()
                    compile_s = time.perf_counter() - t0
                finally:
                    jax.config.update("jax_enable_compilation_cache", cache_on)
                analysis = compiled.memory_analysis()
                memory = (
                    sharding.bytes_per_device(abstract_state["params"])
                    + sharding.bytes_per_device(abstract_state["opt_state"])
                    + (analysis.temp_size_in_bytes if analysis is not None else 0)
                )
                step_s = math.inf
                if memory <= arithmetic.MEMORY_HEADROOM * self.memory_limit:
                    step_s = self._time_steps(abstract_state, compiled)
                known = arithmetic.Measured(model, self._agree(step_s), self._agree(compile_s), int(memory))
            eval_batch_s = known.eval_batch_s
            if with_eval and math.isfinite(known.step_s):
                eval_batch_s = self._agree(self._time_eval(trainer, abstract_state))
        return dataclasses.replace(known, eval_batch_s=eval_batch_s)

    def _agree(self, value: float) -> float:
        """Process 0's figure on every process, so that all of them choose the same plan."""
        if not self.multi:
            return value
        return float(multihost_utils.broadcast_one_to_all(np.float64(value)))

    @staticmethod
    def _zeros(abstract):
        """A state of zeros in its shardings: as fast to step as a trained one, and nothing to compile."""
        return jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding), abstract)

    def _time_steps(self, abstract_state: dict, compiled) -> float:
        state = self._zeros(abstract_state)
        for s in range(2):  # the first steps include allocation and warm-up
            state, metrics = compiled(state, self.stage.train_batch(s, state))
        jax.block_until_ready(metrics)
        n, t0 = 0, time.perf_counter()
        while n < MEASURE_STEPS or time.perf_counter() - t0 < MEASURE_S:
            state, metrics = compiled(state, self.stage.train_batch(2 + n, state))
            n += 1
        float(metrics["loss"])  # waits for the device, as the loop's progress line does
        return (time.perf_counter() - t0) / n

    def _time_eval(self, trainer, abstract_state: dict) -> float:
        eval_step = trainer.jit_eval_step()
        params = self._zeros(abstract_state["params"])
        token_bytes = jax.device_put(
            np.asarray(self.stage.tokenizer.token_bytes(), np.int32), sharding.replicated(self.mesh)
        )
        batches = self.stage.eval_batches[:3]
        jax.block_until_ready(eval_step(params, batches[0], token_bytes))  # compiles (and caches) it
        t0 = time.perf_counter()
        for batch in batches:
            out = eval_step(params, batch, token_bytes)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / len(batches)


def plan_here(cfg: Config, say) -> dict:
    """The plan a budgeted run of cfg would make on this machine now, without training (python -m jaxllm.plan
    --budget=10m): the same measurements, kept for the run that follows."""
    mesh = sharding.make_mesh(cfg)
    model_cfg, choice = kernels.resolve(cfg.model, list(mesh.devices.flat))
    run_cfg = replace(cfg, model=model_cfg)
    say(f"{mesh.size} {mesh.devices.flat[0].platform} device(s), mesh {dict(mesh.shape)}; {choice.why}")
    stage = pretraining(run_cfg, mesh, True)
    return make_plan(cfg, run_cfg, mesh, stage, say, clock_from(machine.process_start()), arithmetic.find_law(cfg))


def bytes_per_token(stage) -> float:
    """UTF-8 bytes per scored token of the held-out batches (turns a predicted loss into bits per byte)."""
    table = np.asarray(stage.tokenizer.token_bytes())
    scored, n_bytes = 0, 0
    for batch in stage.eval_batches:
        for shard in batch["targets"].addressable_shards:
            targets = np.asarray(shard.data)
            scored, n_bytes = scored + targets.size, n_bytes + int(table[targets].sum())
    return n_bytes / scored


def _search(loss_at, n: int, start: int, may_try) -> int:
    """A local minimum of loss_at over indices 0..n-1, from start: strides of 2, then the neighbours. may_try(i):
    whether index i may be evaluated (measuring costs time); others count as no better."""
    try_ = lambda j: 0 <= j < n and may_try(j)
    best = start
    while True:
        steps = [j for j in (best - 2, best + 2) if try_(j)]
        better = min(steps, key=loss_at, default=best)
        if loss_at(better) >= loss_at(best):
            break
        best = better
    return min([best] + [j for j in (best - 1, best + 1) if try_(j)], key=loss_at)


def make_plan(cfg: Config, run_cfg: Config, mesh, stage, say, clock, found: arithmetic.FoundLaw) -> dict:
    """Measures, chooses and returns the plan (plain JSON) for a budgeted run. cfg: as given; run_cfg: with the
    kernels and compute dtype resolved; stage: the pretraining stage (its data is prepared by now); clock: () ->
    seconds of the budget spent so far; found: the law to plan by (jaxllm.scaling.budget.find_law)."""
    tokens_per_step = stage.tokens_per_step
    t = cfg.train
    costs = lambda: arithmetic.Costs(clock() + STARTUP_S, t.eval_every, t.eval_batches, t.checkpoint_every, 0.0)
    measure = Measurer(run_cfg, mesh, stage, device_memory(mesh))
    if t.budget_flops:
        limit = t.budget_flops / (flops_per_token(smallest_model(cfg.model)) * tokens_per_step * arithmetic.MIN_STEPS)
        shapes = arithmetic.candidate_shapes(run_cfg.model, param_count(smallest_model(cfg.model)).total * limit)
        options = [(s, arithmetic.steps_for_flops(s, tokens_per_step, t.budget_flops), None) for s in shapes]
        while True:  # the best by the law that fits in memory (measured: compiling it tells)
            choice = arithmetic.best(found.law, options, tokens_per_step)
            if choice is None or math.isfinite(measure(choice.model).step_s):
                break
            options = [o for o in options if o[0] != choice.model]
        budget_text, eval_s = f"{t.budget_flops:.3g} FLOPs", None
    else:
        budget_s = parse_duration(t.budget)
        shapes = arithmetic.candidate_shapes(
            run_cfg.model, param_count(smallest_model(cfg.model)).total * MAX_PARAMS_FACTOR
        )

        def loss_at(i: int) -> float:
            choice = arithmetic.time_choice(found.law, [measure(shapes[i])], budget_s, costs(), tokens_per_step)
            return choice.loss if choice else math.inf

        # start where the law's compute-optimal size for a guessed throughput (a quarter of the matmul peak) lies
        peak = (t.peak_tflops * 1e12 if t.peak_tflops else probe.peak_flops(run_cfg.model.compute_dtype)) * mesh.size
        guess = 0.25 * peak * max(budget_s - costs().elapsed_s, 1.0)
        n_opt = found.law.optimum(guess)[0]
        start = min(range(len(shapes)), key=lambda i: abs(math.log(param_count(shapes[i]).total / n_opt)))
        deadline = costs().elapsed_s + MEASURING_SHARE * budget_s
        may_try = lambda i: measure.known(shapes[i]) or costs().elapsed_s < deadline
        chosen = shapes[_search(loss_at, len(shapes), start, may_try)]
        eval_s = t.eval_batches * measure(chosen, with_eval=True).eval_batch_s
        choice = arithmetic.time_choice(found.law, list(measure.measured.values()), budget_s, costs(), tokens_per_step)
        budget_text = t.budget
    if choice is None:
        raise_unaffordable(cfg, tokens_per_step)
    per_byte = bytes_per_token(stage)
    m = choice.model
    plan = {
        "budget": t.budget or None,
        "budget_flops": t.budget_flops or None,
        "setup_key": arithmetic.setup_key(cfg),
        "law": {
            **dataclasses.asdict(found.law),
            "source": found.source,
            "fitted_for_this_setup": found.fitted,
            "top_flops": found.top_flops,
        },
        "model": {k: getattr(m, k) for k in arithmetic.SHAPE_FIELDS},
        "params": param_count(m).total,
        "steps": choice.steps,
        "tokens": choice.steps * tokens_per_step,
        "flops": choice.steps * tokens_per_step * flops_per_token(m),
        "predicted": {
            "val_loss": choice.loss,
            "val_bpb": choice.loss / math.log(2) / per_byte,
            "seconds": choice.seconds,
        },
        "bytes_per_token": per_byte,
        "eval_s": eval_s,  # one held-out evaluation of the chosen shape (time budgets: the run steers by it)
        "planned_at_s": clock(),
        "measured": [
            {
                "shape": f"{x.model.n_layer}x{x.model.n_embd}",
                "params": param_count(x.model).total,
                "step_s": x.step_s if math.isfinite(x.step_s) else None,
                "compile_s": x.compile_s,
                "bytes_per_device": x.bytes_per_device,
            }
            for x in measure.measured.values()
        ],
        "fresh_measurements": measure.fresh,
        "machine": machine.describe(),
        "devices": f"{mesh.size} x {mesh.devices.flat[0].device_kind}",
    }
    say(summary(plan, budget_text))
    return plan


def raise_unaffordable(cfg: Config, tokens_per_step: int):
    smallest = smallest_model(cfg.model)
    need = arithmetic.MIN_STEPS * tokens_per_step * flops_per_token(smallest)
    raise ConfigError(
        f"budget {cfg.train.budget or f'{cfg.train.budget_flops:.3g} FLOPs'} affords fewer than "
        f"{arithmetic.MIN_STEPS} steps of even the smallest {cfg.name} model ({need:.2g} FLOPs): raise the budget"
    )
