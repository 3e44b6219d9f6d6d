"""XLA:CPU fast paths for the model's products: bf16 projections and causal attention on row-major operands.

XLA:CPU's fast matmul kernel (YNNPACK) takes row-major operands with a float32 result, contracting the left one's
last axis with the right one's first or last axis; XLA runs any other bf16 matmul, silently, in float32 (here about
230 against 1,200 GFLOP/s for a 2048x1536 by 1536x384 product), and the weight gradient of a plain implementation
contracts both operands' first axes. The functions here are custom VJPs whose every product, forward and backward,
gets operands in a form the kernel takes, materialised row-major where needed (row_major_transpose). jaxllm.model
calls them on one CPU device (on_cpu); elsewhere it uses the plain forms.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxllm import sharding

Array = jax.Array


def on_cpu() -> bool:
    """Whether to use these paths: on a CPU backend, one device. Their conditionals (see row_major_transpose)
    would add collectives on a sharded mesh, and multi-device CPU meshes test sharding here, not speed."""
    return jax.default_backend() == "cpu" and sharding.on_one_device()


def row_major_transpose(a: Array, perm: tuple[int, ...] | None = None) -> Array:
    """jnp.transpose(a, perm) (default: reversed axes), materialised row-major. Left alone, XLA folds a transpose
    into the matmul that reads it, and XLA:CPU then runs a bfloat16 matmul on its slow float32 path: its fast
    kernel (YNNPACK, about 4x float32 here) takes only row-major operands (see above). A conditional's result is
    opaque to that folding, and splitting its last axis pins the row-major layout (otherwise the result is given
    the transposed layout, for free, and the matmul reads it column-major)."""
    perm = tuple(reversed(range(a.ndim))) if perm is None else perm
    shape = tuple(a.shape[i] for i in perm)
    k = math.gcd(shape[-1], 64)
    pinned = lambda a: jnp.transpose(a, perm).reshape(*shape[:-1], shape[-1] // k, k)
    first = a[(0,) * a.ndim]
    return jax.lax.cond(first == first, pinned, pinned, a).reshape(shape)  # both branches are the same


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def bf16_matmul(x: Array, w: Array, transpose_w: bool) -> Array:
    """x (M,K) bfloat16 @ w (K,N) float32 (or (N,K) with transpose_w) -> (M,N) float32, on XLA:CPU's fast bf16
    kernel in both passes: every matmul, forward and backward, gets row-major bf16 operands in a form it takes."""
    return _bf16_matmul_fwd(x, w, transpose_w)[0]


def contract_last(a: Array, b: Array) -> Array:
    """a (M,K) . b (N,K) -> (M,N) float32, contracting both operands' last (row-major) axis: XLA:CPU's bf16 kernel
    takes this form as it is, and faster than a materialised transpose (2048 x 1536 by 1536 x 384 here: 1,900
    against 1,550 GFLOP/s). The other transposed form, contracting the first axes, takes the slow path (240).
    Written a @ b.T instead, XLA materialised the transpose of a few-row product on every call (4.8 against
    0.27 ms for 1 x 384 by 384 x 8192 in float32)."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _bf16_matmul_fwd(x, w, transpose_w):
    wb = w.astype(jnp.bfloat16)
    y = contract_last(x, wb) if transpose_w else jnp.matmul(x, wb, preferred_element_type=jnp.float32)
    return y, (x, wb)


def _bf16_matmul_bwd(transpose_w, residuals, dy):
    """dx = dy @ w.T and dw = x.T @ dy as row-major bf16 matmuls: dx contracts last axes; for dw, of x and dy the
    smaller one is transposed (the weight gradient then comes out transposed: weight-sized, a cheap float32
    transpose)."""
    x, wb = residuals
    dy = dy.astype(jnp.bfloat16)
    mm = functools.partial(jnp.matmul, preferred_element_type=jnp.float32)
    t = row_major_transpose
    dx = mm(dy, wb) if transpose_w else contract_last(dy, wb)
    x_is_smaller = x.shape[1] <= dy.shape[1]
    dw_in_out = mm(t(x), dy) if x_is_smaller else t(mm(t(dy), x))  # (K,N): x.T @ dy
    return dx.astype(x.dtype), t(dw_in_out) if transpose_w else dw_in_out  # float32, like the parameter


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


_HEADS_FIRST = (0, 2, 1, 3)  # (B,T,H,Dh) <-> (B,H,T,Dh)


def _heads_first(x: Array, perm: tuple[int, ...] = _HEADS_FIRST) -> Array:
    """(B,T,H,Dh) -> (B*H, T, Dh) row-major (perm (0,2,3,1): (B*H, Dh, T))."""
    y = row_major_transpose(x, perm)
    return y.reshape(-1, *y.shape[2:])


def _heads_last(x: Array, b: int, dtype) -> Array:
    """(B*H, T, Dh) -> (B,T,H,Dh) row-major, in dtype."""
    return row_major_transpose(x.astype(dtype).reshape(b, -1, *x.shape[1:]), _HEADS_FIRST)


@jax.custom_vjp
def causal_attention(q: Array, k: Array, v: Array) -> Array:
    """Causal softmax attention, q, k, v: (B,T,H,Dh) -> (B,T,H,Dh) in their dtype, every product a batched
    row-major matmul over B*H heads (see row_major_transpose: in bf16 that is XLA:CPU's fast kernel), scores,
    softmax and its gradient in float32. Measured here (GPT-2 6 x 384, T=256, batch 8): the bf16 train step went
    from 720 to 576 ms with it, the float32 one from about 1,140 to 1,004 ms.

    Its residuals are the inputs, the output and the softmax's log-normaliser (B*H,T,1), as in FlashAttention: the
    backward pass recomputes the probabilities from them. The output and normaliser are named (SAVED_NAMES) so
    that a remat policy can keep them rather than run the forward pass again: with remat save_matmuls, that took
    the bf16 step from 425-433 to 400-415 ms."""
    return _causal_attention_fwd(q, k, v)[0]


SAVED_NAMES = ("attention_out", "attention_lse")


def _scores(q_heads: Array, k_heads_t: Array) -> Array:
    """(B*H,T,Dh) . (B*H,Dh,S) -> causally masked scores (B*H,T,S), float32."""
    t, dh = q_heads.shape[1], q_heads.shape[2]
    scores = jnp.matmul(q_heads, k_heads_t, preferred_element_type=jnp.float32) / math.sqrt(dh)
    return jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, jnp.finfo(jnp.float32).min)


def _causal_attention_fwd(q, k, v):
    b = q.shape[0]
    scores = _scores(_heads_first(q), _heads_first(k, (0, 2, 3, 1)))  # (B*H, T, S)
    top = jnp.max(scores, axis=-1, keepdims=True)
    exp = jnp.exp(scores - top)
    total = jnp.sum(exp, axis=-1, keepdims=True)
    out = jnp.matmul((exp / total).astype(q.dtype), _heads_first(v), preferred_element_type=jnp.float32)
    out = checkpoint_name(_heads_last(out, b, q.dtype), SAVED_NAMES[0])  # (B,T,H,Dh)
    lse = checkpoint_name(top + jnp.log(total), SAVED_NAMES[1])  # (B*H, T, 1)
    return out, (q, k, v, out, lse)


def _causal_attention_bwd(residuals, d_out):
    q, k, v, out, lse = residuals
    b, dh = q.shape[0], q.shape[-1]
    mm = functools.partial(jnp.matmul, preferred_element_type=jnp.float32)
    q_heads, k_heads = _heads_first(q), _heads_first(k)
    probs = jnp.exp(_scores(q_heads, _heads_first(k, (0, 2, 3, 1))) - lse)  # (B*H, T, S)
    # sum_s probs * d_probs = sum_d out * d_out: the softmax gradient's row term without the (T,S) product
    row = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)  # (B,T,H)
    row = jnp.transpose(row, (0, 2, 1)).reshape(-1, q.shape[1], 1)  # (B*H, T, 1)
    d_out = _heads_first(d_out.astype(q.dtype))  # (B*H, T, Dh)
    d_probs = mm(d_out, _heads_first(v, (0, 2, 3, 1)))  # (B*H, T, S)
    d_v = mm(row_major_transpose(probs.astype(q.dtype), (0, 2, 1)), d_out)  # (B*H, S, Dh)
    d_scores = (probs * (d_probs - row) / math.sqrt(dh)).astype(q.dtype)
    d_q = mm(d_scores, k_heads)
    d_k = mm(row_major_transpose(d_scores, (0, 2, 1)), q_heads)
    return _heads_last(d_q, b, q.dtype), _heads_last(d_k, b, q.dtype), _heads_last(d_v, b, q.dtype)


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)
