"""LoRA (Hu et al. 2021) as a transform of the parameters, never of the model's math.

For each targeted projection W of every block (posttrain.lora_targets, stacked over layers: W is
(L, *inputs, *outputs), model.transformer.PROJECTIONS gives the split), the model runs with

  W' = W + (lora_alpha / lora_rank) * A @ B,   A: (L, *inputs, r) ~ N(0, 1/fan_in),   B: (L, r, *outputs) = 0

so a fresh run starts at the base model exactly, and only A and B train (jaxllm.train.step merges them in the
jitted step; the gradient and the optimizer state are theirs alone). Adapters are a nested dict mirroring the
parameters, {'blocks': {'attn': {'q': {'lora_a', 'lora_b'}}}, ...}, so optimizer moments and shardings follow them
by key path as they follow the parameters. What this module is not: the state, the optimizer or the checkpoint.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxllm.config import PosttrainConfig
from jaxllm.model.transformer import PROJECTIONS

FACTORS = ("lora_a", "lora_b")


def _per_target(params: dict, targets: tuple[str, ...], fn: Callable) -> dict:
    """{'blocks': {module: {name: fn(index, W, n_in)}}} over the targets (index: the target's place in targets)."""
    out: dict = {}
    for i, name in enumerate(targets):
        module, n_in = PROJECTIONS[name]
        out.setdefault(module, {})[name] = fn(i, params["blocks"][module][name], n_in)
    return {"blocks": out}


def _factor_shapes(w_shape: tuple, n_in: int, rank: int) -> tuple[tuple, tuple]:
    """(A's shape, B's shape) for a stacked kernel (L, *inputs, *outputs)."""
    return (*w_shape[: 1 + n_in], rank), (w_shape[0], rank, *w_shape[1 + n_in :])


def adapter_shapes(params: dict, targets: tuple[str, ...], rank: int) -> dict:
    """The adapters' float32 ShapeDtypeStructs for parameters (arrays or ShapeDtypeStructs: only shapes are read)."""

    def shapes(_, w, n_in):
        return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in zip(FACTORS, _factor_shapes(w.shape, n_in, rank))}

    return _per_target(params, targets, shapes)


def adapter_specs(param_specs: dict, targets: tuple[str, ...], rank_axis) -> dict:
    """The adapters' PartitionSpecs: A keeps its kernel's layer and input axes' placement, B its layer and output
    axes', and the rank axis goes where rank_axis (the rules table's 'lora_rank' entry) says, so A @ B comes out
    laid out as W is."""

    def specs(_, w_spec, n_in):
        return {"lora_a": P(*w_spec[: 1 + n_in], rank_axis), "lora_b": P(w_spec[0], rank_axis, *w_spec[1 + n_in :])}

    return _per_target(param_specs, targets, specs)


def init_adapters(key: jax.Array, params: dict, targets: tuple[str, ...], rank: int) -> dict:
    """Fresh adapters: A normal with variance 1/fan_in (x @ A keeps x's scale), B zeros (the merge adds exactly 0)."""
    keys = jax.random.split(key, len(targets))

    def init(i, w, n_in):
        a_shape, b_shape = _factor_shapes(w.shape, n_in, rank)
        fan_in = math.prod(a_shape[1:-1])
        a = jax.random.normal(keys[i], a_shape, jnp.float32) / math.sqrt(fan_in)
        return {"lora_a": a, "lora_b": jnp.zeros(b_shape, jnp.float32)}

    return _per_target(params, targets, init)


def delta(a: jax.Array, b: jax.Array) -> jax.Array:
    """A @ B per layer: (L, *inputs, r) x (L, r, *outputs) -> (L, *inputs, *outputs), at full float32 precision
    (a backend's default may round float32 matmuls to bf16 or tf32, and the merged weights are exported)."""
    ins, outs = "abcdefgh"[: a.ndim - 2], "ijkmnopq"[: b.ndim - 2]
    return jnp.einsum(f"l{ins}r,lr{outs}->l{ins}{outs}", a, b, precision=jax.lax.Precision.HIGHEST)


def merge(params: dict, adapters: dict, scale: float) -> dict:
    """The parameters with each adapted kernel W replaced by W + scale * A @ B; every other leaf as it is."""

    def walk(p: dict, a: dict) -> dict:
        out = {}
        for k, v in p.items():
            if k not in a:
                out[k] = v
            elif "lora_a" in a[k]:
                out[k] = v + scale * delta(a[k]["lora_a"], a[k]["lora_b"]).astype(v.dtype)
            else:
                out[k] = walk(v, a[k])
        return out

    return walk(params, adapters)


def count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def summary(adapters, params, pt: PosttrainConfig) -> str:
    """One line: adapter parameters against the model's, the rank, the scale and the targets."""
    n, total = count(adapters), count(params)
    return (
        f"LoRA: {n:,} adapter parameters train ({100 * n / total:.2f}% of the model's {total:,}, which stay frozen); "
        f"rank {pt.lora_rank}, alpha {pt.lora_alpha:g} (scale {pt.lora_alpha / pt.lora_rank:g}), "
        f"targets {', '.join(pt.lora_targets)}"
    )
