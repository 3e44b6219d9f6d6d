"""The pure training and evaluation steps, and the sharded train state they act on.

The state is a plain pytree {'params', 'opt_state', 'step', 'schedule', 'rng'} of arrays (the schedule: where the
learning rate's warmup and cosine lie, jaxllm.train.optim; rng: the key data a stage that samples from its policy
draws from, sampling_key, and the step advances): `train_step(state, batch)` returns a new state and metrics and
touches nothing else, so it is jitted once with explicit shardings and the old state donated.
A LoRA run (posttrain.lora_rank > 0, jaxllm.train.lora) trains adapters: its 'params' are they, and the state
holds the base model under 'frozen', which the step reads and never changes; Trainer.model_params gives the
merged model for whatever reads its weights (evaluation, sampling).
A batch is {'inputs': (B,T) int32, 'targets': (B,T) int32} plus an optional 'loss_mask' (B,T) float32 (SFT);
other stages add their own (B,T) leaves and bring a loss_fn that reads them (DPO).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxllm import sharding
from jaxllm.config import Config, OptimConfig
from jaxllm.model.scoring import token_logprobs
from jaxllm.model.transformer import Transformer, abstract_model
from jaxllm.train import lora, optim


def initial_rng(seed: int) -> jax.Array:
    """The state's rng: raw key data (uint32), which checkpoints store as a plain array."""
    return jax.random.key_data(jax.random.key(seed))


def sampling_key(rng: jax.Array) -> jax.Array:
    """The key a step's batch is sampled with; the next step's rng is another branch of the same key."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng), 0)


def next_rng(rng: jax.Array) -> jax.Array:
    return jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(rng), 1))


def token_losses(params: dict, graphdef: nnx.GraphDef, batch: dict) -> jax.Array:
    """Cross-entropy in nats per target token, (B,T) float32."""
    return -token_logprobs(params, graphdef, batch["inputs"], batch["targets"])


def mean_loss(params: dict, graphdef: nnx.GraphDef, batch: dict) -> tuple[jax.Array, dict]:
    """Mean nats over the target tokens the batch's loss_mask keeps (all without one), and no extra metrics."""
    losses = token_losses(params, graphdef, batch)
    if "loss_mask" not in batch:
        return jnp.mean(losses), {}
    mask = batch["loss_mask"]
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0), {}


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What the steps close over: the model's graph, the optimizer, and the shardings on this mesh."""

    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation  # at learning rate 1: the step scales its update
    optim_cfg: OptimConfig
    mesh: Mesh
    state_shardings: dict
    loss_fn: Callable = mean_loss  # (params, graphdef, batch) -> (scalar, {name: scalar}); DPO passes its own
    merge: Callable | None = None  # LoRA: (frozen, adapters) -> the merged parameters, jitted; None: full training

    def model_params(self, state: dict) -> dict:
        """The full model parameters of a state: a LoRA run's frozen base with its adapters merged, otherwise
        state['params'] itself."""
        return state["params"] if self.merge is None else self.merge(state["frozen"], state["params"])

    def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        def loss_of(trained, graphdef, batch):  # the gradient is the trained parameters' only (LoRA: adapters')
            return self.loss_fn(self.model_params({**state, "params": trained}), graphdef, batch)

        (loss, extra), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"], self.graphdef, batch)
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
        lr = optim.learning_rate(self.optim_cfg, state["schedule"], state["step"])
        params = optax.apply_updates(state["params"], jax.tree.map(lambda u: lr.astype(u.dtype) * u, updates))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr, **extra}
        new_state = {  # the schedule (and a LoRA run's frozen base) pass through unchanged
            **state,
            "params": params,
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": next_rng(state["rng"]),
        }
        return new_state, metrics

    def eval_step(self, params: dict, batch: dict, token_bytes: jax.Array) -> dict:
        """Summed nats over the batch's target tokens (those its loss_mask keeps, if it has one), their count, and
        the UTF-8 bytes they stand for (token_bytes: (vocab,) per-token byte lengths), so batches add up exactly."""
        losses = token_losses(params, self.graphdef, batch)
        mask = batch.get("loss_mask", jnp.ones_like(losses))
        return {
            "nats": jnp.sum(losses * mask),
            "tokens": jnp.sum(mask),
            "bytes": jnp.sum(token_bytes[batch["targets"]] * mask),
        }

    def jit_train_step(self):
        batch_sharding = sharding.batch_sharding(self.mesh)
        return jax.jit(
            self.train_step,
            in_shardings=(self.state_shardings, batch_sharding),
            out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
            donate_argnums=0,
        )

    def jit_eval_step(self):
        batch_sharding = sharding.batch_sharding(self.mesh)
        replicated = sharding.replicated(self.mesh)
        return jax.jit(
            self.eval_step,
            in_shardings=(model_layout(self.state_shardings), batch_sharding, replicated),
            out_shardings=replicated,
        )


def _moment_specs(opt_shapes, params_shapes: dict, pspecs: dict):
    """Specs for the optimizer state: a moment stored under a parameter's key path (optax keeps moments in trees
    keyed like the parameters, also inside Muon's partition of them) with its shape takes that parameter's spec;
    counters and coefficients are replicated."""

    def param_key(path) -> tuple:
        keys = []
        for entry in reversed(path):  # the trailing run of dict keys is the parameter's path
            if not isinstance(entry, jax.tree_util.DictKey):
                break
            keys.append(entry.key)
        return tuple(reversed(keys))

    param_leaves = jax.tree_util.tree_flatten_with_path(params_shapes)[0]
    spec_leaves = jax.tree.leaves(pspecs, is_leaf=lambda x: isinstance(x, P))
    by_key = {param_key(path): (leaf.shape, spec) for (path, leaf), spec in zip(param_leaves, spec_leaves)}

    def spec(path, leaf):
        shape, param_spec = by_key.get(param_key(path), (None, P()))
        return param_spec if shape == leaf.shape else P()

    return jax.tree_util.tree_map_with_path(spec, opt_shapes)


def model_layout(tree: dict):
    """The entry for the whole model's parameters in a state-shaped tree (abstract state or shardings): a LoRA
    run's frozen base, otherwise its params. For layouts only: Trainer.model_params gives a state's weights."""
    return tree["frozen"] if "frozen" in tree else tree["params"]


def make_trainer(cfg: Config, mesh: Mesh, loss_fn: Callable = mean_loss) -> tuple[Trainer, dict]:
    """The trainer and the abstract state (ShapeDtypeStructs carrying their shardings: a restore target).
    cfg.model's kernels and compute dtype must be resolved (jaxllm.kernels.resolve)."""
    graphdef, abstract_params = nnx.split(abstract_model(cfg.model), nnx.Param)
    optimizer = optim.make_optimizer(cfg.optim)
    pspecs = sharding.param_specs(abstract_params)
    params_shapes = nnx.to_pure_dict(abstract_params)
    pt = cfg.posttrain
    trained_shapes, trained_specs = params_shapes, pspecs
    if pt.lora_rank:
        trained_shapes = lora.adapter_shapes(params_shapes, pt.lora_targets, pt.lora_rank)
        trained_specs = lora.adapter_specs(pspecs, pt.lora_targets, sharding.logical_to_spec(("lora_rank",))[0])
    opt_shapes = jax.eval_shape(optimizer.init, trained_shapes)
    opt_specs = _moment_specs(opt_shapes, trained_shapes, trained_specs)
    schedule_shapes = jax.eval_shape(lambda: optim.initial_schedule(cfg.optim, cfg.train.steps))
    schedule_specs = jax.tree.map(lambda _: P(), schedule_shapes)
    specs = {"params": trained_specs, "opt_state": opt_specs, "step": P(), "schedule": schedule_specs, "rng": P()}
    shapes = {
        "params": trained_shapes,
        "opt_state": opt_shapes,
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "schedule": schedule_shapes,
        "rng": jax.eval_shape(initial_rng, 0),
    }
    if pt.lora_rank:
        specs["frozen"], shapes["frozen"] = pspecs, params_shapes
    shardings = sharding.named(mesh, specs)
    abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    merge = None
    if pt.lora_rank:
        scaled = functools.partial(lora.merge, scale=pt.lora_alpha / pt.lora_rank)
        merge = jax.jit(scaled, out_shardings=shardings["frozen"])  # merged weights laid out as the base's
    return Trainer(graphdef, optimizer, cfg.optim, mesh, shardings, loss_fn, merge), abstract_state


def init_state(cfg: Config, trainer: Trainer, params: dict | None = None) -> dict:
    """Fresh optimizer state, and fresh parameters unless `params` (fine-tuning: already placed on
    model_layout(trainer.state_shardings)) are given; created directly in their shards (never whole on one device).
    A LoRA run's given params become its frozen base, and its fresh adapters (from train.seed) what it trains."""
    if params is not None:  # only the optimizer's state is new: no random parameters are made and dropped
        opt_init = jax.jit(trainer.optimizer.init, out_shardings=trainer.state_shardings["opt_state"])
        rest = {
            "step": jnp.zeros((), jnp.int32),
            "schedule": optim.initial_schedule(cfg.optim, cfg.train.steps),
            "rng": initial_rng(cfg.train.seed),
        }
        rest = jax.device_put(rest, {k: trainer.state_shardings[k] for k in rest})
        pt = cfg.posttrain
        if pt.lora_rank:
            adapters = jax.jit(
                lambda key: lora.init_adapters(key, params, pt.lora_targets, pt.lora_rank),  # reads params' shapes
                out_shardings=trainer.state_shardings["params"],
            )(jax.random.key(cfg.train.seed))
            return {"params": adapters, "frozen": params, "opt_state": opt_init(adapters), **rest}
        return {"params": params, "opt_state": opt_init(params), **rest}

    def create():
        model = Transformer(cfg.model, nnx.Rngs(cfg.train.seed))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return {
            "params": params,
            "opt_state": trainer.optimizer.init(params),
            "step": jnp.zeros((), jnp.int32),
            "schedule": optim.initial_schedule(cfg.optim, cfg.train.steps),
            "rng": initial_rng(cfg.train.seed),
        }

    with nnx.use_eager_sharding(False):
        return jax.jit(create, out_shardings=trainer.state_shardings)()
