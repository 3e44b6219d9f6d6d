"""The optimizer: global-norm clipping, then AdamW with linear warmup and cosine decay to a floor.

Weight decay applies to matrices only: never to norms, biases, or the token and position embeddings.
"""

from __future__ import annotations

import jax
import optax

from jaxllm.config import OptimConfig

NO_DECAY_NAMES = ("embed", "pos_embed")  # top-level parameter names that are embeddings


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.min_lr_ratio)


def decay_mask(params: dict) -> dict:
    """True where weight decay applies: parameters of two or more dimensions, excluding embeddings.
    Stacked layer parameters have a leading 'layers' axis, so a stacked bias is 2-D: its name decides instead."""
    def wants_decay(path, leaf):
        keys = [getattr(p, "key", None) for p in path]
        if keys[0] in NO_DECAY_NAMES or keys[-1] in ("scale", "bias") or str(keys[-1]).endswith("_bias"):
            return False
        return leaf.ndim >= 2
    return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule(cfg, total_steps), b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip > 0 else adamw
