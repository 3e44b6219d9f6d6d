"""The KV cache and the weights decoding reads, both laid out as the model's kernel set (cfg.kernels) wants them.

A step reads its whole cache, so where the cache is large next to the weights it grows as the generation goes, in
at most four lengths (cache_length), rather than starting at its full length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxllm import kernels
from jaxllm.config import ModelConfig
from jaxllm.model.transformer import DecodeWeights, split_layers


def init_cache(cfg: ModelConfig, batch: int, length: int) -> tuple:
    """An empty KV cache for `length` positions, one dict per layer, in the kernel set's layout."""
    ops = kernels.get(cfg.kernels)
    return tuple(
        ops.init_cache(batch, length, cfg.kv_heads, cfg.head_dim, jnp.dtype(cfg.compute_dtype))
        for _ in range(cfg.n_layer)
    )


def decode_weights(params: dict, cfg: ModelConfig, batch: int) -> DecodeWeights:
    """Per-layer weights for decoding `batch` rows, made once per generation (the kernel set's decode_layout)."""
    layers, head, down_out_in = kernels.get(cfg.kernels).decode_layout(
        split_layers(params), params, cfg.compute_dtype, batch
    )
    return DecodeWeights(layers, head, down_out_in)


def cache_length(needed: int, total: int) -> int:
    """The KV cache's length while `needed` of a generation's `total` slots are written: a whole number of quarters
    of the total (in multiples of 64), so that a generation compiles at most four decoding loops."""
    step = 64 * -(-total // 256)
    return min(total, step * -(-needed // step))


@functools.lru_cache(maxsize=64)
def _cache_bytes(cfg: ModelConfig, batch: int, length: int) -> int:
    """init_cache's bytes, from its shapes (kept per shape: tracing it costs more than the rest of the decision)."""
    return sum(
        x.size * x.dtype.itemsize
        for x in jax.tree.leaves(jax.eval_shape(functools.partial(init_cache, cfg, batch, length)))
    )


def cache_grows(cfg: ModelConfig, params: dict, weights: DecodeWeights, batch: int, total: int) -> bool:
    """Whether the cache grows (cache_length) rather than starting whole: where a step's reading all of it costs at
    least a quarter of its reading the weights (below that, growing costs more compilations than it saves)."""
    head = params["embed"] if params.get("head") is None else params["head"]  # read as it is unless weights has one
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(weights)) + (head.nbytes if weights.head is None else 0)
    return 4 * _cache_bytes(cfg, batch, total) >= weight_bytes


@functools.partial(jax.jit, static_argnums=(1, 2))
def grow_cache(cache: tuple, cfg: ModelConfig, length: int) -> tuple:
    """The cache padded to `length` slots: empty keys and values, position -1."""
    axes = kernels.get(cfg.kernels).CACHE_SEQ_AXES

    def pad(name, a):
        widths = [(0, length - a.shape[i] if i == axes[name] else 0) for i in range(a.ndim)]
        return jnp.pad(a, widths, constant_values=-1 if name == "pos" else 0)

    return tuple({name: pad(name, a) for name, a in layer.items()} for layer in cache)


jit_init_cache = jax.jit(init_cache, static_argnums=(0, 1, 2))
jit_decode_weights = jax.jit(decode_weights, static_argnums=(1, 2))
