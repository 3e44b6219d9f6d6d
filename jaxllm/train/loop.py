"""The training loop: restore or initialise, compile, step, evaluate, save, finish. Pretraining, SFT and DPO share it.

`run(cfg, run_dir)` trains (or resumes) the run in run_dir. Rerunning a finished run says so; rerunning an
interrupted one resumes from its latest checkpoint, and the losses continue exactly (a batch is a pure function of
the step, the schedule is in the state). What a stage brings (data, batches, loss, sample) is a
`jaxllm.train.stage.Stage`.

A time-budgeted run steers its end to its deadline: at each progress line it moves the schedule's end to the step
that the latest step times, the evaluations and saves still due and the final evaluation fit into the time left,
and the learning rate stays continuous (jaxllm.train.optim.reanchor). A plan made once cannot hold a wall-clock
budget on a machine whose speed changes under it (a shared VM's did, by 3x for minutes). A resumed run finishes
the schedule its checkpoint holds: its clock restarted, so it has no deadline to steer to.

run_dir may be gs://bucket/path (every host the same): Orbax writes the checkpoints there, and the run's own files
reach it as jaxllm.train.run_files says.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from jaxllm import kernels, sharding, storage
from jaxllm.cli import Stopped
from jaxllm.config import Config, ConfigError, parse_duration, replace
from jaxllm.data.sources import check_sources
from jaxllm.interop.hf import init_params
from jaxllm.kernels import probe
from jaxllm.model.accounting import flops_per_token, param_count
from jaxllm.plots import plot_loss
from jaxllm.scaling.budget import CHECKPOINT_S, find_law, steps_that_fit
from jaxllm.scaling.budget import apply as apply_plan
from jaxllm.train import budget, checkpoint, distributed, goodput, lora, optim, plan_report
from jaxllm.train import step as step_lib
from jaxllm.train.evaluation import evaluate
from jaxllm.train.metrics import MetricsLog, Progress, clock_from
from jaxllm.train.preemption import EXIT_PREEMPTED, Preemption, Saves
from jaxllm.train.run_files import RunFiles
from jaxllm.train.stage import Stage, pretraining


def run(
    cfg: Config,
    run_dir: str | os.PathLike,
    progress: bool = True,
    make_stage: Callable[[Config, object, bool], Stage] = pretraining,
    show_config: bool = False,
    started_at: float | None = None,
) -> dict:
    """Trains (or resumes) the run in run_dir; returns the final figures:
    {'step', 'val_loss', 'val_bpb', 'tokens_per_s', 'params', 'checkpoint', 'sample', ...}.
    make_stage(cfg, mesh, progress) supplies the data, batches and loss (see Stage). started_at (seconds since the
    epoch): where a budget's clock starts; the commands pass the process's start, a library call defaults to now."""
    clock = clock_from(time.time() if started_at is None else started_at)
    storage.check_writable(run_dir)
    say = print if (progress and jax.process_index() == 0) else (lambda *a, **k: None)
    with RunFiles(run_dir, say) as files:
        return _run(cfg, files, progress, make_stage, show_config, clock, say)


def _run(cfg: Config, files: RunFiles, progress: bool, make_stage, show_config: bool, clock, say) -> dict:
    """run's body: run_dir is files.root (checkpoints, and the paths shown); its own files are written in
    files.local."""
    run_dir = files.root
    plan = budget.load_plan(files.local) if budget.budgeted(cfg) else None
    if plan is not None:  # a budgeted run resumes on its saved plan, never a new one
        cfg = apply_plan(cfg, plan)
    latest, meta = _latest_checkpoint(cfg, run_dir)
    # a budgeted run ends where it steered to, so its final checkpoint (the one with the final figures) says it ended
    if meta is not None and ("final" in meta if plan is not None else latest >= cfg.train.steps):
        return _already_complete(run_dir, latest, meta, say)
    check_sources(cfg.data.sources)  # like an impossible mesh, refused before anything is printed or written
    if budget.budgeted(cfg) and cfg.posttrain.stage:
        raise ConfigError("a budget plans pretraining runs only: drop --train.budget/--train.budget_flops")
    mesh = sharding.make_mesh(cfg)
    model_cfg, choice = kernels.resolve(cfg.model, list(mesh.devices.flat))
    run_cfg = replace(cfg, model=model_cfg)  # what runs here; `cfg`, as given, is what is saved
    show = progress and jax.process_index() == 0
    stage = None
    if budget.budgeted(cfg) and plan is None:
        law = find_law(cfg)  # a bad --train.law is refused before anything is printed
        say(
            f"{cfg.name}: planning {cfg.train.budget or f'{cfg.train.budget_flops:.3g} FLOPs'} on {mesh.size} "
            f"{mesh.devices.flat[0].platform} device(s); {choice.why}"
        )
        stage = make_stage(run_cfg, mesh, show)  # prepares the data first: its time is part of the budget
        plan = budget.make_plan(cfg, run_cfg, mesh, stage, say, clock, law)
        cfg, run_cfg = apply_plan(cfg, plan), apply_plan(run_cfg, plan)
        budget.save_plan(files.local, plan)
        stage = make_stage(run_cfg, mesh, show)  # the same data, read back; the sample needs the planned shape
    say(_summary(cfg, run_cfg, mesh, choice, run_dir, latest))
    if show_config:
        say(cfg.to_json())
    stage = stage or make_stage(run_cfg, mesh, show)
    if stage.summary:
        say(stage.summary)
    trainer, abstract_state = step_lib.make_trainer(run_cfg, mesh, stage.loss_fn or step_lib.mean_loss)
    if cfg.posttrain.lora_rank:
        say(lora.summary(abstract_state["params"], abstract_state["frozen"], cfg.posttrain))
    account = goodput.start(files.local, latest, stage.tokens_per_step, clock)
    with account.timing("compile"):
        train_step = _compile(trainer, abstract_state, stage, mesh, say)
    if cfg.train.compile_only:
        return {"step": 0, "params": _n_params(abstract_state)}
    _write_config(cfg, files.local)
    goodput.mark_start(files.local, latest or 0)
    log = MetricsLog(files.local / "metrics.jsonl", jax.process_index() == 0)
    mngr = checkpoint.manager(run_dir, keep=cfg.train.keep_checkpoints, keep_every=cfg.train.keep_every)
    with jax.set_mesh(mesh):
        state = _restore_or_init(run_cfg, trainer, abstract_state, mngr, latest, say)
        deadline = None
        if plan is not None and plan.get("budget") and latest is None:
            deadline = _Deadline(parse_duration(plan["budget"]), plan["eval_s"])
        elif plan is None and int(state["schedule"]["end"]) != cfg.train.steps:  # train.steps changed on resume
            schedule = optim.reanchor(state["schedule"], int(state["step"]), cfg.train.steps)
            state["schedule"] = jax.device_put(schedule, trainer.state_shardings["schedule"])
        state, result, tokens_per_s = _train(
            run_cfg, train_step, trainer, stage, state, mngr, mesh, files, say, clock, deadline, account
        )
        end = int(state["step"])
        final = {
            "val_loss": result["val_loss"],
            "val_bpb": result["val_bpb"],
            "tokens_per_s": tokens_per_s,
            "params": _n_params(abstract_state),
            "steps": end,
            "kernels": model_cfg.kernels,
            "compute_dtype": model_cfg.compute_dtype,
        }
        if plan is not None:
            final["plan"] = plan_report.outcome(plan, final, clock() if latest is None else None)
            log.write(final["plan"])
        with account.timing("checkpoint"):
            checkpoint.save(mngr, end, state, cfg, stage.tokenizer, extra={"final": final})
            mngr.wait_until_finished()
            mngr.close()
        with account.timing("eval"):
            sample = stage.sample(trainer.graphdef, trainer.model_params(state))
    final["goodput"] = goodput.close(account, end, files.local, stage.tokens_per_step, say)
    return _finish(files, final, sample, say, plan)


def _latest_checkpoint(cfg: Config, run_dir: epath.Path) -> tuple[int | None, dict | None]:
    """The latest checkpoint's step and meta (None, None for a new run); refuses one of another config."""
    if not (run_dir / "checkpoints").is_dir():
        return None, None
    mngr = checkpoint.manager(run_dir, read_only=True)
    latest = mngr.latest_step()
    meta = checkpoint.read_meta(mngr, latest) if latest is not None else None
    mngr.close()
    if meta is not None:
        checkpoint.check_compatible(meta["config"], cfg, run_dir)
    return latest, meta


def _already_complete(run_dir: epath.Path, latest: int, meta: dict, say) -> dict:
    final = meta.get("final", {})
    say(f"run already complete: {run_dir} holds a checkpoint at step {latest}")
    for key in ("val_loss", "val_bpb"):
        if key in final:
            say(f"  {key}: {final[key]:.4f}")
    say(f"  checkpoint: {run_dir / 'checkpoints' / str(latest)}\n  metrics: {run_dir / 'metrics.jsonl'}")
    return {**final, "step": latest, "checkpoint": str(run_dir / "checkpoints" / str(latest))}


def _summary(
    cfg: Config, run_cfg: Config, mesh, choice: kernels.Choice, run_dir: epath.Path, latest: int | None
) -> str:
    """Two lines: what is trained, for how long, where; and on what (mesh, kernels, dtype, and why)."""
    m, t = run_cfg.model, run_cfg.train
    from_step = f", resuming at step {latest}" if latest else ""
    devices = f"{mesh.size} {mesh.devices.flat[0].platform} device{'s' if mesh.size > 1 else ''}"
    return (
        f"{cfg.name}: {m.family}, {param_count(m).total / 1e6:.2f}M parameters ({m.n_layer} layers x "
        f"{m.n_embd}), {t.steps} steps of {t.batch_size} x "
        f"{run_cfg.posttrain.seq_len if run_cfg.posttrain.stage else m.block_size} tokens{from_step} -> {run_dir}\n"
        f"on {devices}, mesh {dict(mesh.shape)}; {choice.why}"
    )


def _compile(trainer, abstract_state: dict, stage: Stage, mesh, say):
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = trainer.jit_train_step().lower(abstract_state, stage.batch_shapes).compile()
    say(f"compiled the train step in {time.perf_counter() - t0:.1f}s; {_memory_plan(abstract_state, compiled)}")
    return compiled


def _write_config(cfg: Config, run_dir: pathlib.Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(cfg.to_json())
        tmp.replace(run_dir / "config.json")


def _restore_or_init(cfg: Config, trainer, abstract_state: dict, mngr, latest: int | None, say) -> dict:
    if latest is not None:
        return checkpoint.restore_state(mngr, latest, abstract_state)
    params = None  # fine-tuning starts from given parameters, with a fresh optimizer
    if cfg.train.init_from.startswith("hf:"):
        params = jax.device_put(
            init_params(cfg.train.init_from, cfg.model), step_lib.model_layout(trainer.state_shardings)
        )
    elif cfg.train.init_from:
        params = checkpoint.restore_latest_params(cfg.train.init_from, cfg.model, step_lib.model_layout(abstract_state))
    if cfg.train.init_from:
        say(f"parameters from {cfg.train.init_from}")
    return step_lib.init_state(cfg, trainer, params)


@dataclasses.dataclass
class _Deadline:
    """What a time-budgeted run steers by: its budget from process start, and the pauses it must leave room for
    (seconds; measured at planning, then at each evaluation and save of the run)."""

    budget_s: float
    eval_s: float
    checkpoint_s: float = CHECKPOINT_S


STEER_WINDOW_S = 20.0  # the step time an end is steered by: the latest progress intervals adding up to this


def _steer(deadline: _Deadline, t, done: int, step_s: float, clock) -> int:
    """The end step that fits the time left (process 0's figure on every process, so all step alike)."""
    pauses = {t.eval_every: deadline.eval_s, t.checkpoint_every: deadline.checkpoint_s}
    end = steps_that_fit(deadline.budget_s - clock(), step_s, done, pauses, deadline.eval_s)
    if jax.process_count() > 1:
        end = int(multihost_utils.broadcast_one_to_all(np.int64(end)))
    return end


def _train(
    cfg: Config,
    train_step,
    trainer,
    stage: Stage,
    state,
    mngr,
    mesh,
    files: RunFiles,
    say,
    clock,
    deadline,
    account: goodput.Goodput,
):
    """Steps from the state's step to its schedule's end, logging, evaluating and saving on their intervals, and
    steering the end to the deadline if there is one; returns the state, the final evaluation and the steady-state
    tokens/s."""
    t = cfg.train
    eval_step = trainer.jit_eval_step()
    token_bytes = jax.device_put(jnp.asarray(stage.tokenizer.token_bytes(), jnp.int32), sharding.replicated(mesh))
    log = MetricsLog(files.local / "metrics.jsonl", jax.process_index() == 0)
    peak = (t.peak_tflops * 1e12 if t.peak_tflops else probe.peak_flops(cfg.model.compute_dtype)) * mesh.size
    end = int(state["schedule"]["end"])
    at_peak = flops_per_token(cfg.model) * stage.tokens_per_step / peak
    progress = Progress(end, stage.tokens_per_step, at_peak, log, say, t.log_every, clock)

    @account.timing("eval")
    def run_eval(s):
        params = trainer.model_params(state)
        result = evaluate(eval_step, params, stage.eval_batches, token_bytes)
        extra = stage.eval_extra(trainer.graphdef, params) if stage.eval_extra else {}
        result.update(extra)
        log.write({"step": s, "val_loss": result["val_loss"], "val_bpb": result["val_bpb"], **extra, "time_s": clock()})
        say(
            f"eval step {s}: val_loss {result['val_loss']:.4f} | val_bpb {result['val_bpb']:.4f}"
            + "".join(f" | {k} {v:.4f}" for k, v in extra.items())
        )
        return result

    done = int(state["step"])
    if stage.eval_extra and done == 0:  # where a stage's own figure starts (RL's pass@1: the starting model's)
        run_eval(0)
    saves = Saves(t, cfg.posttrain.updates_per_sample)
    with Preemption() as preemption, distributed.peers_watched(lambda: done):
        while done < end:
            with account.timing("data"):
                batch = stage.train_batch(done, state)
            with account.timing("steps"):
                state, metrics = train_step(state, batch)
                done += 1
                progress.step(done, metrics)
            if done % t.log_every == 0:
                with account.timing("checkpoint"):  # the run's logs reaching object storage
                    files.publish(final=False)
            paused = time.perf_counter()
            if done % t.eval_every == 0 and done != end:
                run_eval(done)
                if deadline:
                    deadline.eval_s = time.perf_counter() - paused
            saving = time.perf_counter()
            stop = saves.stop_after(done, preemption)
            if done != end and (stop or saves.due(done)):
                with account.timing("checkpoint"):
                    checkpoint.save(mngr, done, state, cfg, stage.tokenizer)
                    files.publish()
                saves.saved()
                if deadline:
                    deadline.checkpoint_s = time.perf_counter() - saving
            if stop and done != end:
                with account.timing("checkpoint"):
                    mngr.close()  # waits for the save to commit
                goodput.close(account, done, files.local, stage.tokens_per_step, say)
                raise Stopped(
                    f"stopped at step {done} of {end} on {preemption.signal}: checkpoint "
                    f"{files.root / 'checkpoints' / str(done)} saved; rerun the same command to resume",
                    EXIT_PREEMPTED,
                )
            if deadline and done % t.log_every == 0 and done != end:
                steered = _steer(deadline, t, done, progress.recent_step_s(STEER_WINDOW_S), clock)
                if steered != end:
                    schedule = optim.reanchor(state["schedule"], done, steered)
                    state["schedule"] = jax.device_put(schedule, trainer.state_shardings["schedule"])
                    end = progress.steps = steered
            progress.resume_clock(done)  # evaluation, checkpoint and steering time are not training time
    return state, run_eval(end), progress.steady_rate()


def _finish(files: RunFiles, final: dict, sample: str, say, plan: dict | None) -> dict:
    run_dir = files.root
    if jax.process_index() == 0:
        plot_loss(files.local / "metrics.jsonl", files.local / "loss.png")
        if plan is not None:
            plan_report.plot(files.local / "metrics.jsonl", plan, files.local / "plan.png")
    ckpt = run_dir / "checkpoints" / str(final["steps"])
    say(
        f"\nfinal: val_loss {final['val_loss']:.4f} | val_bpb {final['val_bpb']:.4f} | "
        f"{final['tokens_per_s']:,.0f} tok/s | {final['params'] / 1e6:.2f}M params"
    )
    if plan is not None:
        say(plan_report.outcome_lines(final["plan"]) + f"\nplan: {run_dir / budget.PLAN_FILE}, {run_dir / 'plan.png'}")
    say(f"checkpoint: {ckpt}\nmetrics: {run_dir / 'metrics.jsonl'}\nloss curve: {run_dir / 'loss.png'}")
    say(f"sample:\n{sample}")
    return {**final, "step": final["steps"], "checkpoint": str(ckpt), "sample": sample}


def _n_params(abstract_state: dict) -> int:
    return int(sum(x.size for x in jax.tree.leaves(step_lib.model_layout(abstract_state))))


def _memory_plan(abstract_state: dict, compiled) -> str:
    """Per-device bytes: parameters and optimizer state from their shardings, temporaries from the compiled step's
    memory analysis (absent on backends that do not report one)."""
    mib = 2**20
    params = sharding.bytes_per_device([abstract_state["params"], abstract_state.get("frozen")])  # LoRA: + base
    opt = sharding.bytes_per_device(abstract_state["opt_state"])
    analysis = compiled.memory_analysis()
    temps = f"{analysis.temp_size_in_bytes / mib:.1f} MiB" if analysis is not None else "not reported"
    return f"per device: parameters {params / mib:.1f} MiB, optimizer state {opt / mib:.1f} MiB, temporaries {temps}"
