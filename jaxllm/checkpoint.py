"""Orbax checkpoints of a run: the train state, plus a JSON item with the step, the config and the tokenizer.

Each checkpoint is self-contained (the tokenizer file travels inside it, base64), so generation, evaluation and
export need only the run directory. Saves are asynchronous and atomic: Orbax writes `<step>.orbax-checkpoint-tmp`
and renames it when complete, so a killed save leaves the previous checkpoint as the latest. Restoring takes an
abstract state whose leaves carry the wanted shardings, which reshards onto whatever mesh the run now has.
"""

from __future__ import annotations

import base64
import logging
import pathlib

import jax
import orbax.checkpoint as ocp

from jaxllm import tokenizer as tok
from jaxllm.config import Config, ConfigError, ModelConfig, config_from_dict, diff


# Orbax warns "Given directory is read only" for every read-only manager, which generate, chat, evaluate and export
# open on purpose: the line would head each command's output.
logging.getLogger("absl").addFilter(lambda record: not record.getMessage().startswith("Given directory is read only"))


def manager(run_dir: pathlib.Path, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    saving = {"read_only": True, "max_to_keep": None, "save_interval_steps": 0} if read_only else {"max_to_keep": keep}
    options = ocp.CheckpointManagerOptions(create=not read_only, **saving)
    return ocp.CheckpointManager(pathlib.Path(run_dir).resolve() / "checkpoints", options=options,
                                 item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: dict, cfg: Config, tokenizer: tok.Tokenizer,
         extra: dict | None = None) -> None:
    meta = {"step": step, "config": cfg.to_dict(), "tokenizer_name": tokenizer.path.name,
            "tokenizer_b64": base64.b64encode(tokenizer.path.read_bytes()).decode("ascii"), **(extra or {})}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def read_meta(mngr: ocp.CheckpointManager, step: int | None = None) -> dict | None:
    step = mngr.latest_step() if step is None else step
    if step is None:
        return None
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state) -> dict:
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params) -> dict:
    """Only the parameters (no optimizer state): for generation, evaluation, export and fine-tuning."""
    target = {"params": abstract_params}
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=jax.tree.map(
            lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype), target),
            partial_restore=True)))
    return restored["state"]["params"]


def restore_latest_params(run_dir: pathlib.Path, model: ModelConfig, abstract_params) -> dict:
    """The parameters of run_dir's latest checkpoint onto abstract_params' shardings (train.init_from=RUN_DIR);
    refuses a checkpoint of another model shape, naming the fields that differ."""
    run_dir = pathlib.Path(run_dir)
    mngr = manager(run_dir, read_only=True) if (run_dir / "checkpoints").is_dir() else None
    step = mngr.latest_step() if mngr else None
    if step is None:
        raise ConfigError(f"train.init_from={run_dir} holds no checkpoint: train that run first or fix the path")
    saved = config_from_dict(read_meta(mngr, step)["config"]).model
    differing = [k for k in diff(saved, model, "model.") if not _resumable(k)]
    if differing:
        raise ConfigError(f"train.init_from={run_dir} holds a different model ({', '.join(differing)} differ); "
                          "use the same --model.* settings")
    params = restore_params(mngr, step, abstract_params)
    mngr.close()
    return params


def tokenizer_from_meta(meta: dict, directory: pathlib.Path) -> tok.Tokenizer:
    """Writes the checkpoint's tokenizer file into `directory` (if not already there) and loads it."""
    path = pathlib.Path(directory) / meta["tokenizer_name"]
    data = base64.b64decode(meta["tokenizer_b64"])
    if not path.is_file() or path.read_bytes() != data:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return tok.load(path)


# Fields that may change between a run and its resumption: they shape neither the state nor the data order.
RESUMABLE_FIELDS = ("name", "train.steps", "train.log_every", "train.eval_every", "train.eval_batches",
                    "train.checkpoint_every", "train.keep_checkpoints", "train.peak_tflops", "train.sample_prompt",
                    "train.sample_tokens", "train.compile_only", "mesh.", "distributed.", "data.cache_dir",
                    "model.remat", "model.attention", "model.scan_layers", "model.compute_dtype")


def _resumable(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUMABLE_FIELDS)


def check_compatible(saved: dict, cfg: Config, run_dir: pathlib.Path) -> None:
    """Refuses to resume a run whose checkpoint was made with a different model, data or optimizer."""
    differing = [k for k in diff(config_from_dict(saved), cfg) if not _resumable(k)]
    if differing:
        raise ConfigError(f"{run_dir} holds a checkpoint of a different config ({', '.join(differing)} differ); "
                          f"use another --run_dir or the same settings")
