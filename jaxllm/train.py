"""Pretraining entry point: `python -m jaxllm.train --experiment=base [--section.key=value ...] [--run_dir=PATH]`.

config -> prepared data (cached) -> mesh -> state (restored or fresh) -> loop (log, eval, checkpoint) -> final
evaluation, loss plot and a sample. Rerunning a finished run says so; rerunning an interrupted one resumes it.
Post-training (jaxllm.posttrain: SFT, DPO) runs this same loop with its own Stage: data, batches, loss, sample.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Callable

from jaxllm.cli import run_main
from jaxllm.config import Config, ConfigError, parse_cli


def _check_run_dir(run_dir: pathlib.Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run_dir={run_dir} is a file, not a directory: choose another path")
    probe = run_dir if run_dir.exists() else next(p for p in run_dir.parents if p.exists())
    if not os.access(probe, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"--run_dir={run_dir}: {probe} is not readable and writable by you; choose another path "
                          "or fix its permissions")


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class MetricsLog:
    """metrics.jsonl (appended, so a resumed run continues it); written by process 0 only."""

    def __init__(self, path: pathlib.Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@dataclasses.dataclass(frozen=True)
class Stage:
    """What one kind of training brings to run(): its tokenizer, batches, loss and end-of-run sample. The mesh, the
    jitted step, checkpoints, resume, logging and held-out evaluation belong to run(). `pretraining` builds the
    default; jaxllm.posttrain builds SFT and DPO stages."""
    tokenizer: object  # jaxllm.tokenizer.Tokenizer
    batch_shapes: dict  # leaf name -> jax.ShapeDtypeStruct of the global batch, (train.batch_size, T), sharded
    tokens_per_step: int  # tokens the model trains on per step (throughput and MFU)
    train_batch: Callable  # step -> global batch: a pure function of the step, so a resumed run is exact
    eval_batches: list  # fixed global batches scored by Trainer.eval_step (their loss_mask applies)
    sample: Callable  # (graphdef, params) -> the text shown and returned at the end
    loss_fn: Callable | None = None  # (params, graphdef, batch) -> (loss, metrics); None: step.mean_loss


def pretraining(cfg: Config, mesh, progress: bool) -> Stage:
    """The default stage: windows of the prepared corpus (cached), next-token loss on every token."""
    import jax
    import jax.numpy as jnp

    from jaxllm import sharding
    from jaxllm.data import loader
    from jaxllm.data.prepare import prepare
    from jaxllm.generate import SamplingConfig, complete

    prepared = prepare(cfg, progress=progress)
    tokenizer = prepared.tokenizer
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
                          f"{cfg.model.vocab_size}; set --model.vocab_size={tokenizer.vocab_size}")
    for split, tokens in (("train", prepared.train_tokens), ("val", prepared.val_tokens)):
        try:
            loader.check_length(tokens, cfg.model.block_size, split)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    batch, length = cfg.train.batch_size, cfg.model.block_size
    block, blocks = sharding.batch_block(mesh, batch)  # this process's rows of each batch

    def train_batch(s):
        local = loader.train_batch(prepared.train_tokens, length, batch, cfg.train.seed, s, block, blocks)
        return sharding.global_batch(local, mesh, batch)

    def sample(graphdef, params):
        return cfg.train.sample_prompt + complete(
            graphdef, params, cfg.model, tokenizer.encode, tokenizer.decode, [cfg.train.sample_prompt],
            SamplingConfig(max_new_tokens=cfg.train.sample_tokens, temperature=0.8, seed=cfg.train.seed))[0]

    eval_batches = [sharding.global_batch(b, mesh, batch) for b in loader.eval_batches(
        prepared.val_tokens, length, batch, cfg.train.eval_batches, block, blocks)]
    shape = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=sharding.batch_sharding(mesh))
    return Stage(tokenizer, {"inputs": shape, "targets": shape}, batch * length, train_batch, eval_batches, sample)


def run(cfg: Config, run_dir: pathlib.Path, progress: bool = True,
        make_stage: Callable[[Config, object, bool], Stage] = pretraining) -> dict:
    """Trains (or resumes) the run in run_dir; returns the final figures:
    {'step', 'val_loss', 'val_bpb', 'tokens_per_s', 'params', 'checkpoint', 'sample'}.
    make_stage(cfg, mesh, progress) supplies the data, batches and loss (see Stage)."""
    run_dir = pathlib.Path(run_dir)
    _check_run_dir(run_dir)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxllm import checkpoint, sharding, step as step_lib
    from jaxllm.evaluate_loss import evaluate
    from jaxllm.optim import schedule
    from jaxllm.perf import peak_flops
    from jaxllm.plots import plot_loss
    from jaxllm.scaling import flops_per_token

    is_main = jax.process_index() == 0
    say = print if (progress and is_main) else (lambda *a, **k: None)

    mngr = checkpoint.manager(run_dir, keep=cfg.train.keep_checkpoints, read_only=not run_dir.exists())
    latest = mngr.latest_step() if (run_dir / "checkpoints").is_dir() else None
    meta = checkpoint.read_meta(mngr, latest) if latest is not None else None
    if meta is not None:
        checkpoint.check_compatible(meta["config"], cfg, run_dir)
        if latest >= cfg.train.steps:
            say(f"run already complete: {run_dir} holds a checkpoint at step {latest} of {cfg.train.steps}")
            final = meta.get("final", {})
            for key in ("val_loss", "val_bpb"):
                if key in final:
                    say(f"  {key}: {final[key]:.4f}")
            say(f"  checkpoint: {run_dir / 'checkpoints' / str(latest)}\n  metrics: {run_dir / 'metrics.jsonl'}")
            return {**final, "step": latest, "checkpoint": str(run_dir / "checkpoints" / str(latest))}

    say(f"config: {cfg.name}\n{cfg.to_json()}")
    mesh = sharding.make_mesh(cfg)
    stage = make_stage(cfg, mesh, progress and is_main)
    tokenizer = stage.tokenizer
    trainer, abstract_state = step_lib.make_trainer(cfg, mesh, stage.loss_fn or step_lib.mean_loss)
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        train_step = trainer.jit_train_step().lower(abstract_state, stage.batch_shapes).compile()
        say(f"compiled train step in {time.perf_counter() - t0:.1f}s")
    say(_memory_plan(abstract_state, train_step))
    if cfg.train.compile_only:
        return {"step": 0, "params": sum(x.size for x in jax.tree.leaves(abstract_state["params"]))}
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main:
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(cfg.to_json())
        tmp.replace(run_dir / "config.json")
    mngr = checkpoint.manager(run_dir, keep=cfg.train.keep_checkpoints)

    n_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
    tokens_per_step = stage.tokens_per_step
    flops_per_step = flops_per_token(cfg.model) * tokens_per_step
    peak = (cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops else peak_flops(cfg.model.compute_dtype)) \
        * len(jax.devices())
    say(f"model: {cfg.model.family}, {n_params / 1e6:.2f}M parameters, {cfg.model.n_layer} layers x "
        f"{cfg.model.n_embd} wide; {tokens_per_step:,} tokens/step; mesh {dict(mesh.shape)}; "
        f"peak {peak / 1e12:.2f} TFLOP/s for MFU")

    with jax.set_mesh(mesh):
        if meta is not None:
            state = checkpoint.restore_state(mngr, latest, abstract_state)
            say(f"resumed from {run_dir / 'checkpoints' / str(latest)} at step {latest}")
        else:
            params = None  # fine-tuning starts from given parameters, with a fresh optimizer
            if cfg.train.init_from.startswith("hf:"):
                from jaxllm.hf import init_params
                params = jax.device_put(init_params(cfg.train.init_from, cfg.model), trainer.state_shardings["params"])
            elif cfg.train.init_from:
                params = checkpoint.restore_latest_params(cfg.train.init_from, cfg.model, abstract_state["params"])
            state = step_lib.init_state(cfg, trainer, params)
            if cfg.train.init_from:
                say(f"parameters from {cfg.train.init_from}")
        start = int(state["step"])
        eval_step = trainer.jit_eval_step()

        token_bytes = jax.device_put(jnp.asarray(tokenizer.token_bytes(), jnp.int32), sharding.replicated(mesh))
        log = MetricsLog(run_dir / "metrics.jsonl", is_main)

        def run_eval(s):
            result = evaluate(eval_step, state["params"], stage.eval_batches, token_bytes)
            log.write({"step": s, "val_loss": result["val_loss"], "val_bpb": result["val_bpb"]})
            say(f"eval step {s}: val_loss {result['val_loss']:.4f} | val_bpb {result['val_bpb']:.4f}")
            return result

        lr_at = schedule(cfg.optim, cfg.train.steps)
        interval_start, interval_steps, rates = time.perf_counter(), 0, []
        result = None
        for s in range(start, cfg.train.steps):
            state, metrics = train_step(state, stage.train_batch(s))
            interval_steps += 1
            done = s + 1
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                loss = float(metrics["loss"])  # waits for the step: the interval's time is real
                elapsed = time.perf_counter() - interval_start
                rate = interval_steps * tokens_per_step / elapsed
                rates.append(rate)
                mfu = rate / tokens_per_step * flops_per_step / peak
                eta = (cfg.train.steps - done) * tokens_per_step / rate
                if not math.isfinite(loss):
                    raise RuntimeError(f"loss became {loss} at step {done}; lower optim.lr or check the data")
                extra = {k: float(v) for k, v in metrics.items() if k not in ("loss", "grad_norm")}  # a stage's own
                log.write({"step": done, "loss": loss, "lr": float(lr_at(s)), "grad_norm": float(metrics["grad_norm"]),
                           "tokens_per_s": rate, "mfu": mfu, **extra})
                say(f"step {done}/{cfg.train.steps} | loss {loss:.4f} | "
                    + "".join(f"{k} {v:.3f} | " for k, v in extra.items())
                    + f"lr {float(lr_at(s)):.2e} | {rate:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {_format_eta(eta)}")
                interval_start, interval_steps = time.perf_counter(), 0
            if done % cfg.train.eval_every == 0 and done != cfg.train.steps:
                run_eval(done)
            if done % cfg.train.checkpoint_every == 0 and done != cfg.train.steps:
                checkpoint.save(mngr, done, state, cfg, tokenizer)
            if done % cfg.train.log_every == 0:
                interval_start = time.perf_counter()  # evaluation and checkpoint time are not training time

        result = run_eval(cfg.train.steps)
        # steady-state rate: the first interval includes warm-up
        tokens_per_s = float(np.median(rates[1:] if len(rates) > 1 else rates)) if rates else float("nan")
        final = {"val_loss": result["val_loss"], "val_bpb": result["val_bpb"], "tokens_per_s": tokens_per_s,
                 "params": int(n_params), "steps": cfg.train.steps}
        checkpoint.save(mngr, cfg.train.steps, state, cfg, tokenizer, extra={"final": final})
        mngr.wait_until_finished()
        mngr.close()

        sample = stage.sample(trainer.graphdef, state["params"])
    if is_main:
        plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")
    ckpt = run_dir / "checkpoints" / str(cfg.train.steps)
    say(f"\nfinal: val_loss {result['val_loss']:.4f} | val_bpb {result['val_bpb']:.4f} | "
        f"{tokens_per_s:,.0f} tok/s | {n_params / 1e6:.2f}M params")
    say(f"checkpoint: {ckpt}\nmetrics: {run_dir / 'metrics.jsonl'}\nloss curve: {run_dir / 'loss.png'}")
    say(f"sample:\n{sample}")
    return {**final, "step": cfg.train.steps, "checkpoint": str(ckpt), "sample": sample}


def _memory_plan(abstract_state: dict, compiled) -> str:
    """Per-device bytes: parameters and optimizer state from their shardings, temporaries from the compiled step's
    memory analysis (absent on backends that do not report one)."""
    from jaxllm import sharding
    mib = 2 ** 20
    params = sharding.bytes_per_device(abstract_state["params"])
    opt = sharding.bytes_per_device(abstract_state["opt_state"])
    analysis = compiled.memory_analysis()
    temps = f"{analysis.temp_size_in_bytes / mib:.2f} MiB" if analysis is not None else "not reported"
    return (f"memory per device: parameters {params / mib:.2f} MiB | optimizer state {opt / mib:.2f} MiB | "
            f"step temporaries {temps}")


def main(argv: list[str], stage: str = "") -> int:
    """The command of every stage: '' pretraining (this module), 'sft' and 'dpo' (python -m jaxllm.sft / .dpo)."""
    cfg, flags = parse_cli(argv, allowed_flags=("run_dir",))
    run_dir = pathlib.Path(flags.get("run_dir") or f"runs/{pathlib.Path(flags.get('experiment', 'base')).stem}")
    from jaxllm import distributed
    distributed.initialize(cfg.distributed)  # before anything touches JAX, reading a checkpoint included
    make_stage = pretraining
    if stage or cfg.posttrain.stage:
        from jaxllm.posttrain import stage as posttrain
        cfg, make_stage = posttrain.start_config(cfg, stage), posttrain.make_stage
    run(cfg, run_dir, make_stage=make_stage)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
