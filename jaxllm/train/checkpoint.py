"""Orbax checkpoints of a run: the train state, plus a JSON item with the step, the config, the tokenizer and
where the model came from (jaxllm.train.provenance).

Each checkpoint is self-contained (the tokenizer file travels inside it, base64), so generation, evaluation and
export need only the run directory. Saves are asynchronous and atomic: on a local disk Orbax writes
`<step>.orbax-checkpoint-tmp` and renames it when complete; on gs://, which has no rename, it writes `<step>`
and marks it complete with a `commit_success.txt` written last. Either way a killed save leaves the previous
checkpoint as the latest. The run directory is local or gs:// (jaxllm.storage). Restoring takes an
abstract state whose leaves carry the wanted shardings, which reshards onto whatever mesh the run now has.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import logging
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxllm import kernels, storage
from jaxllm import tokenizer as tok
from jaxllm.config import Config, ConfigError, ModelConfig, config_from_dict, diff, replace
from jaxllm.model.transformer import abstract_model
from jaxllm.train import lora, provenance

# Orbax warns "Given directory is read only" for every read-only manager, which generate, chat, evaluate and export
# open on purpose: the line would head each command's output.
logging.getLogger("absl").addFilter(lambda record: not record.getMessage().startswith("Given directory is read only"))


def manager(
    run_dir: str | os.PathLike, keep: int = 2, read_only: bool = False, keep_every: int = 0
) -> ocp.CheckpointManager:
    """keep: the latest checkpoints kept; keep_every: besides them, every one whose step is a multiple of it."""
    saving = {"read_only": True, "max_to_keep": None, "save_interval_steps": 0} if read_only else {"max_to_keep": keep}
    if keep_every and not read_only:
        saving["keep_period"] = keep_every
    options = ocp.CheckpointManagerOptions(create=not read_only, **saving)
    return ocp.CheckpointManager(
        storage.path(storage.resolve(run_dir)) / "checkpoints", options=options, item_names=("state", "meta")
    )


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    state: dict,
    cfg: Config,
    tokenizer: tok.Tokenizer,
    extra: dict | None = None,
) -> None:
    meta = {
        "step": step,
        "config": cfg.to_dict(),
        "tokenizer_name": tokenizer.path.name,
        "tokenizer_b64": base64.b64encode(tokenizer.path.read_bytes()).decode("ascii"),
        "provenance": provenance.of_checkpoint(cfg, tokenizer.path, _start_meta(cfg.train.init_from)),
        **(extra or {}),
    }
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def _start_meta(init_from: str) -> dict | None:
    """The latest checkpoint's meta of the run that train.init_from names (None for none or a Hugging Face one)."""
    if not init_from or init_from.startswith("hf:"):
        return None
    mngr = manager(init_from, read_only=True)
    meta = read_meta(mngr)
    mngr.close()
    return meta


def _unreadable(mngr: ocp.CheckpointManager, step: int, e: Exception) -> ConfigError:
    where = f"{mngr.directory}/{step}"
    return ConfigError(
        f"the checkpoint {where} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
        f"delete that step's folder to fall back to an earlier one, or use another --run_dir"
    )


def read_meta(mngr: ocp.CheckpointManager, step: int | None = None) -> dict | None:
    step = mngr.latest_step() if step is None else step
    if step is None:
        return None
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # a truncated or foreign file: a bad input, named with its fix
        raise _unreadable(mngr, step, e) from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise _unreadable(mngr, step, ValueError("no config in its meta item"))
    return meta


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state) -> dict:
    try:
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:
        raise _unreadable(mngr, step, e) from None


def _restore_items(mngr: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """The state's items that target names (ShapeDtypeStructs carrying shardings), nothing else."""
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=jax.tree.map(
                        lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype), target
                    ),
                    partial_restore=True,
                )
            ),
        )
    except Exception as e:
        raise _unreadable(mngr, step, e) from None
    return restored["state"]


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params, saved: Config) -> dict:
    """The model's parameters only (no optimizer state), onto abstract_params' shardings: for generation,
    evaluation, export and fine-tuning. A LoRA run's (saved: its config) are its frozen base with the adapters
    merged, so that every reader of a run gets the model it trained."""
    pt = saved.posttrain
    if not pt.lora_rank:
        return _restore_items(mngr, step, {"params": abstract_params})["params"]
    layout = jax.tree.leaves(abstract_params)[0].sharding
    small = NamedSharding(layout.mesh, P()) if isinstance(layout, NamedSharding) else layout  # adapters: replicated
    adapters = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=small),
        lora.adapter_shapes(abstract_params, pt.lora_targets, pt.lora_rank),
    )
    restored = _restore_items(mngr, step, {"params": adapters, "frozen": abstract_params})
    merge = jax.jit(
        functools.partial(lora.merge, scale=pt.lora_alpha / pt.lora_rank),
        out_shardings=jax.tree.map(lambda s: s.sharding, abstract_params),
    )
    return merge(restored["frozen"], restored["params"])


def restore_latest_params(run_dir: str | os.PathLike, model: ModelConfig, abstract_params) -> dict:
    """The parameters of run_dir's latest checkpoint onto abstract_params' shardings (train.init_from=RUN_DIR;
    a LoRA run's merged); refuses a checkpoint of another model shape, naming the fields that differ."""
    run_dir = storage.path(run_dir)
    mngr = manager(run_dir, read_only=True) if (run_dir / "checkpoints").is_dir() else None
    step = mngr.latest_step() if mngr else None
    if step is None:
        raise ConfigError(f"train.init_from={run_dir} holds no checkpoint: train that run first or fix the path")
    saved = config_from_dict(read_meta(mngr, step)["config"])
    differing = [k for k in diff(saved.model, model, "model.") if not _resumable(k)]
    if differing:
        raise ConfigError(
            f"train.init_from={run_dir} holds a different model ({', '.join(differing)} differ); "
            "use the same --model.* settings"
        )
    params = restore_params(mngr, step, abstract_params, saved)
    mngr.close()
    return params


def tokenizer_from_meta(meta: dict, run_dir: str | os.PathLike) -> tok.Tokenizer:
    """Writes the checkpoint's tokenizer file into the run directory, or for a gs:// one into a local folder
    (jaxllm.storage.local_cache: the tokenizer libraries read local files), if not already there, and loads it."""
    path = storage.local_cache(run_dir) / meta["tokenizer_name"]
    data = base64.b64decode(meta["tokenizer_b64"])
    if not path.is_file() or path.read_bytes() != data:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return tok.load(path)


# Fields that may change between a run and its resumption: they shape neither the state nor the data order.
RESUMABLE_FIELDS = (
    "name",
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.checkpoint_minutes",
    "train.keep_checkpoints",
    "train.keep_every",
    "train.peak_tflops",
    "train.sample_prompt",
    "train.sample_tokens",
    "train.compile_only",
    "mesh.",
    "distributed.",
    "data.cache_dir",
    "model.remat",
    "model.scan_layers",
    "model.compute_dtype",
    "model.kernels",
)


def _resumable(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUMABLE_FIELDS)


def check_compatible(saved: dict, cfg: Config, run_dir: str | os.PathLike) -> None:
    """Refuses to resume a run whose checkpoint was made with a different model, data or optimizer."""
    differing = [k for k in diff(config_from_dict(saved), cfg) if not _resumable(k)]
    if differing:
        raise ConfigError(
            f"{run_dir} holds a checkpoint of a different config ({', '.join(differing)} differ); "
            f"use another --run_dir or the same settings"
        )


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    cfg: Config  # as saved, with model.kernels and model.compute_dtype resolved for this machine
    graphdef: nnx.GraphDef
    params: dict  # pure dict of float32 arrays on the first device
    tokenizer: tok.Tokenizer
    step: int
    choice: kernels.Choice  # what model.kernels and model.compute_dtype resolved to here, and why
    saved: Config  # the config as the checkpoint holds it ('auto' where it said auto)


def load_run(run_dir: str | os.PathLike, step: int | None = None) -> LoadedRun:
    """The parameters, config and tokenizer of a run's checkpoint (the latest unless `step` is given), for
    generation, evaluation and export on this process's first device; run_dir local or gs://."""
    run_dir = storage.path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(
            f"--run_dir={run_dir} holds no checkpoints: train first (python -m jaxllm.train "
            f"--run_dir={run_dir}) or import one (python -m jaxllm.hf import --run_dir={run_dir})"
        )
    mngr = manager(run_dir, read_only=True)
    steps = mngr.all_steps()
    step = max(steps) if step is None and steps else step
    if step not in steps:
        raise ConfigError(f"--step={step}: {run_dir} has checkpoints at steps {sorted(steps)}; pick one of them")
    meta = read_meta(mngr, step)
    saved = config_from_dict(meta["config"])
    device = jax.devices()[0]
    model, choice = kernels.resolve(saved.model, [device])
    cfg = replace(saved, model=model)
    graphdef, abstract_params = nnx.split(abstract_model(cfg.model), nnx.Param)
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(device)),
        nnx.to_pure_dict(abstract_params),
    )
    params = restore_params(mngr, step, target, saved)
    mngr.close()
    return LoadedRun(cfg, graphdef, params, tokenizer_from_meta(meta, run_dir), step, choice, saved)
