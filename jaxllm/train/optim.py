"""The optimizer: global-norm clipping, then AdamW or Muon, with linear warmup and cosine decay to a floor.

Weight decay applies to matrices only: never to norms, biases, or the token and position embeddings.

Muon (Jordan et al. 2024) updates each transformer-block matrix with its momentum orthogonalised by Newton-Schulz
iterations, at its own learning rate (optim.muon_lr); embeddings, the output head, norms and biases stay on AdamW.
On Tiny Shakespeare (GPT-2 layers, 2 x 128 wide, 1,024 tokens a step, 800-step schedule) it reached validation
loss 1.94 after 400 steps, where AdamW had 2.14 (lr 3e-3) and 2.12 (lr 1e-2), for a dearer step.
"""

from __future__ import annotations

import jax
import optax

from jaxllm.config import OptimConfig

NO_DECAY_NAMES = ("embed", "pos_embed")  # top-level parameter names that are embeddings


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )


def decay_mask(params: dict) -> dict:
    """True where weight decay applies: parameters of two or more dimensions, excluding embeddings.
    Stacked layer parameters have a leading 'layers' axis, so a stacked bias is 2-D: its name decides instead."""

    def wants_decay(path, leaf):
        keys = [getattr(p, "key", None) for p in path]
        if keys[0] in NO_DECAY_NAMES or keys[-1] in ("scale", "bias") or str(keys[-1]).endswith("_bias"):
            return False
        return leaf.ndim >= 2

    return jax.tree_util.tree_map_with_path(wants_decay, params)


# Input axes of each stacked block matrix, after its leading 'layers' axis: the axes `model.dense` contracts.
# The remaining axes are the output; Muon orthogonalises the (inputs, outputs) matrix of each layer separately.
MUON_INPUT_AXES = {"q": 1, "k": 1, "v": 1, "o": 2, "up": 1, "gate": 1, "down": 1}


def muon_dims(params: dict) -> dict:
    """MuonDimensionNumbers for the block matrices, None (AdamW) for every other parameter."""

    def dims(path, leaf):
        keys = [getattr(p, "key", None) for p in path]
        n_in = MUON_INPUT_AXES.get(keys[-1]) if keys[0] == "blocks" else None
        if n_in is None:
            return None
        return optax.contrib.MuonDimensionNumbers(
            reduction_axis=tuple(range(1, 1 + n_in)), output_axis=tuple(range(1 + n_in, leaf.ndim))
        )

    return jax.tree_util.tree_map_with_path(dims, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    lr = schedule(cfg, total_steps)
    if cfg.name == "muon":
        tx = optax.contrib.muon(
            lambda step: lr(step) * (cfg.muon_lr / cfg.lr),
            beta=cfg.muon_momentum,
            weight_decay=cfg.weight_decay,  # block matrices only: the rest has none
            muon_weight_dimension_numbers=muon_dims,
            adam_learning_rate=lr,
            adam_b1=cfg.beta1,
            adam_b2=cfg.beta2,
            eps=cfg.eps,
        )
    else:
        tx = optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx) if cfg.grad_clip > 0 else tx
