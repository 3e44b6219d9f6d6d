"""The portable kernels: plain jnp and `jax.nn.dot_product_attention`, what every GPU and TPU runs.

This is the math the other kernel sets must equal (tests/test_kernels.py). Products accumulate in float32 and add
their bias in float32 before rounding to the compute dtype, as a GEMM epilogue does; attention scores and softmax
are float32. The KV cache is (B,S,KV,Dh) in the compute dtype, the layout `jax.nn.dot_product_attention` reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxllm.kernels import slots
from jaxllm.kernels.names import ATTENTION_OUT

Array = jax.Array


def dense(
    x: Array, w: Array, n_in: int = 1, bias: Array | None = None, out_dtype=None, transpose_w: bool = False
) -> Array:
    """Contracts x's last n_in axes with w's first n_in axes (its last n_in with transpose_w), plus bias.

    x: (B,T,*in), w: (*in, *out) or, with transpose_w, (*out, *in) (a tied output head); bias: (*out).
    w is cast to x's dtype (the compute dtype); the result is out_dtype (default: x's dtype)."""
    w_axes = tuple(range(w.ndim - n_in, w.ndim)) if transpose_w else tuple(range(n_in))
    x_axes = tuple(range(x.ndim - n_in, x.ndim))
    y = jax.lax.dot_general(x, w.astype(x.dtype), ((x_axes, w_axes), ((), ())), preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype or x.dtype)


def causal_attention(q: Array, k: Array, v: Array) -> Array:
    """Causal softmax attention with grouped KV heads. q: (B,T,H,Dh); k, v: (B,T,KV,Dh) -> (B,T,H,Dh).

    The output is named ATTENTION_OUT, so that remat policies can keep it in every kernel set."""
    return checkpoint_name(jax.nn.dot_product_attention(q, k, v, is_causal=True), ATTENTION_OUT)


def init_cache(batch: int, length: int, kv_heads: int, head_dim: int, dtype) -> dict:
    """One layer's empty cache: k and v (B,S,KV,Dh) in the compute dtype, pos (B,S) = -1 (an empty slot)."""
    return {
        "k": jnp.zeros((batch, length, kv_heads, head_dim), dtype),
        "v": jnp.zeros((batch, length, kv_heads, head_dim), dtype),
        "pos": jnp.full((batch, length), -1, jnp.int32),
    }


def cached_attention(q: Array, k: Array, v: Array, positions: Array, cache: dict, index: Array) -> tuple[Array, dict]:
    """Writes this call's keys and values (B,T,KV,Dh) at slot `index` of the cache (a scalar, or (B,): each row at
    its own), in place, and attends every query (B,T,H,Dh) at `positions` (B,T) to the cached keys whose position
    is valid (>= 0) and not after its own."""
    write = lambda full, new: slots.write(full, new, index, axis=1)
    cache = {"k": write(cache["k"], k), "v": write(cache["v"], v), "pos": write(cache["pos"], positions)}
    key_pos = cache["pos"][:, None, :]  # (B,1,S)
    mask = (key_pos >= 0) & (key_pos <= positions[:, :, None])  # (B,T,S)
    y = jax.nn.dot_product_attention(q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype), mask=mask[:, None])
    return y, cache


def decode_layout(layers: tuple, params: dict, compute_dtype: str, batch: int) -> tuple[tuple, Array | None, bool]:
    """The weights a decoding step reads, as they are: (layers, no head of its own, down matrices in by out)."""
    del params, compute_dtype, batch
    return layers, None, False


CACHE_SEQ_AXES = {"k": 1, "v": 1, "pos": 1}  # the axis of each cache array that grows with its length
