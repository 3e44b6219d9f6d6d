"""Checkpoint overhead of asynchronous saves on the training step, measured in this process for `python -m jaxllm.bench
resilience`: `base` (as fixed steps run it) and the GPT-2 124M shape (one sequence of 1024 per step: what this CPU
steps in seconds), both on random tokens (a step's time does not depend on them), each checkpoint carrying base's
tokenizer as the loop's do. Per model, interleaved rounds of one window of steps after a save against the same
window without; the blocking time of the save call and the time to its commit; the overhead at the config's
checkpoint_every, both as the blocking time over the interval's step time and as the window's whole extra time
(background writes compete with the steps for the cores).
"""

from __future__ import annotations

import pathlib
import shutil
import statistics
import time

import jax
import numpy as np

from jaxllm import kernels, sharding
from jaxllm.config import Config, ModelConfig, TrainConfig, load_experiment, replace
from jaxllm.train import checkpoint
from jaxllm.train import step as step_lib

WINDOW_S = 10.0  # the longest window of steps timed with and without a save (2 cores: minutes would be noise too)
GPT2_124M = ModelConfig(family="gpt2", vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def _steps_and_saves(cfg: Config, batch_for) -> tuple:
    """A compiled step and a fresh state of cfg (kernels resolved here) on this process's devices."""
    mesh = sharding.make_mesh(cfg)
    model_cfg, choice = kernels.resolve(cfg.model, list(mesh.devices.flat))
    run_cfg = replace(cfg, model=model_cfg)
    trainer, abstract_state = step_lib.make_trainer(run_cfg, mesh)
    batch = batch_for(run_cfg, mesh)
    with jax.set_mesh(mesh):
        compiled = trainer.jit_train_step().lower(abstract_state, batch).compile()
        state = step_lib.init_state(run_cfg, trainer)
    return compiled, state, batch, mesh, choice


def _random_batch(cfg: Config, mesh) -> dict:
    shape = (cfg.train.batch_size, cfg.model.block_size + 1)
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, shape, dtype=np.int32)
    return jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, sharding.batch_sharding(mesh))


def overhead(cfg: Config, tokenizer, rounds: int, window_s: float, root: pathlib.Path) -> dict:
    """Interleaved rounds of a window of steps after a save against the same window alone (checkpoint_every steps,
    or fewer where those take over window_s), and one save's blocking and commit times; the overhead at
    cfg.train.checkpoint_every (see the module's docstring)."""
    compiled, state, batch, mesh, choice = _steps_and_saves(cfg, _random_batch)
    shutil.rmtree(root, ignore_errors=True)
    mngr = checkpoint.manager(root, keep=1)
    holder = {"state": state, "step": 0}

    def steps(n: int) -> None:
        for _ in range(n):
            holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics["loss"])

    def save() -> float:
        holder["step"] += 1
        t0 = time.perf_counter()
        checkpoint.save(mngr, holder["step"], holder["state"], cfg, tokenizer)
        return time.perf_counter() - t0

    with jax.set_mesh(mesh):
        steps(2)  # warm-up
        t0 = time.perf_counter()
        steps(2)
        window = min(cfg.train.checkpoint_every, max(2, int(window_s / ((time.perf_counter() - t0) / 2))))
        commits, blocking = [], []
        for _ in range(2):
            blocking.append(save())
            t0 = time.perf_counter()
            mngr.wait_until_finished()
            commits.append(blocking[-1] + time.perf_counter() - t0)
        with_save, without = [], []
        for r in range(rounds):
            for saving in (r % 2 == 0, r % 2 == 1):  # which goes first alternates
                t0 = time.perf_counter()
                if saving:
                    blocking.append(save())
                steps(window)
                if saving:
                    mngr.wait_until_finished()  # a commit longer than the window counts whole
                (with_save if saving else without).append(time.perf_counter() - t0)
    mngr.close()
    shutil.rmtree(root, ignore_errors=True)
    step_s = statistics.median(without) / window
    interval_s = cfg.train.checkpoint_every * step_s
    extra = [a - b for a, b in zip(with_save, without)]
    return {
        "model": f"{cfg.model.family} {cfg.model.n_layer} x {cfg.model.n_embd}, vocab {cfg.model.vocab_size}",
        "params": int(sum(x.size for x in jax.tree.leaves(step_lib.model_layout(holder["state"])))),
        "state_mib": sum(x.nbytes for x in jax.tree.leaves(holder["state"])) / 2**20,
        "tokens_per_step": cfg.train.batch_size * cfg.model.block_size,
        "choice": choice.why,
        "checkpoint_every": cfg.train.checkpoint_every,
        "window": window,
        "rounds": rounds,
        "step_s": step_s,
        "blocking_s": statistics.median(blocking),
        "blocking_range_s": [min(blocking), max(blocking)],
        "commit_s": statistics.median(commits),
        "window_with_save_s": with_save,
        "window_without_s": without,
        "window_ratio": statistics.median(a / b for a, b in zip(with_save, without)),
        "window_ratio_range": [
            min(a / b for a, b in zip(with_save, without)),
            max(a / b for a, b in zip(with_save, without)),
        ],
        "overhead_blocking": statistics.median(blocking) / interval_s,
        "overhead_window": statistics.median(extra) / interval_s,
    }


def base_config(steps: int) -> Config:
    """experiments/base.py as `--train.budget= --train.steps=N` runs it."""
    cfg = load_experiment("base")
    return replace(cfg, train=replace(cfg.train, budget="", steps=steps))


def gpt2_124m_config(batch_size: int) -> Config:
    """The GPT-2 124M shape, at the train section's defaults but for the batch (what this CPU steps in seconds)."""
    return Config(name="gpt2_124m", model=GPT2_124M, train=TrainConfig(batch_size=batch_size))


def overhead_line(r: dict) -> str:
    return (
        f"step {1e3 * r['step_s']:.1f} ms, save blocking {1e3 * r['blocking_s']:.0f} ms, commit {r['commit_s']:.2f} s, "
        f"overhead {100 * r['overhead_blocking']:.2f}% (blocking) / {100 * r['overhead_window']:.2f}% (window)"
    )
