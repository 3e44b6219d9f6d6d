"""Kernels for XLA:CPU on one device: the same math as jaxllm.kernels.reference, in forms XLA:CPU runs fast.

XLA:CPU's fast matmul kernel (YNNPACK/oneDNN) takes row-major operands with a float32 result, contracting the left
one's last axis with the right one's first or last axis; XLA runs any other bf16 matmul, silently, on a slow
float32 path, and the weight gradient of a plain implementation contracts both operands' first axes. So here:
- `dense` flattens to one 2-D product (XLA:CPU differentiates a 3-D product slowly), and in bf16 runs a custom VJP
  whose every product, forward and backward, gets row-major operands (row_major_transpose);
- a product of fewer than FEW_ROWS rows (decoding) is bound by reading the weights: it reads float32 weights in
  float32 (the bf16 kernel takes no single row), or the bf16 copies that `decode_layout` makes once;
- `causal_attention` is a custom VJP of batched row-major products that keeps, as FlashAttention does, only its
  output and the softmax's log-normaliser for the backward pass;
- the KV cache is float32, k stored (B*KV,Dh,S) and v (B*KV,S,Dh), the forms the batched products read, with batch
  and heads on one axis (a size-1 batch axis defeats XLA:CPU's in-place update of the cache).
Its conditionals would add collectives on a sharded mesh: `jaxllm.kernels.resolve` picks this set only for one
CPU device. Measurements of each choice are in the benchmark's output (python -m jaxllm.bench), not here.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxllm.kernels import slots
from jaxllm.kernels.names import ATTENTION_LSE, ATTENTION_OUT

Array = jax.Array


def row_major_transpose(a: Array, perm: tuple[int, ...] | None = None) -> Array:
    """jnp.transpose(a, perm) (default: reversed axes), materialised row-major. Left alone, XLA folds a transpose
    into the matmul that reads it, and XLA:CPU then runs a bfloat16 matmul on its slow float32 path: its fast
    kernel takes only row-major operands (see above). A conditional's result is
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
    takes this form as it is (the other transposed form, contracting the first axes, takes the slow path), and
    written a @ b.T, XLA would materialise the transpose of a few-row product on every call."""
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
def _causal_attention(q: Array, k: Array, v: Array) -> Array:
    """Causal softmax attention, q, k, v: (B,T,H,Dh) -> (B,T,H,Dh) in their dtype, every product a batched
    row-major matmul over B*H heads (see row_major_transpose: in bf16 that is XLA:CPU's fast kernel), scores,
    softmax and its gradient in float32.

    Its residuals are the inputs, the output and the softmax's log-normaliser (B*H,T,1), as in FlashAttention: the
    backward pass recomputes the probabilities from them. The output and normaliser are named (ATTENTION_OUT,
    ATTENTION_LSE) so that a remat policy can keep them rather than run the forward pass again."""
    return _causal_attention_fwd(q, k, v)[0]


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
    out = checkpoint_name(_heads_last(out, b, q.dtype), ATTENTION_OUT)  # (B,T,H,Dh)
    lse = checkpoint_name(top + jnp.log(total), ATTENTION_LSE)  # (B*H, T, 1)
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


_causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


def causal_attention(q: Array, k: Array, v: Array) -> Array:
    """Causal softmax attention with grouped KV heads, as the reference's: q (B,T,H,Dh), k, v (B,T,KV,Dh)."""
    group = q.shape[2] // k.shape[2]
    return _causal_attention(q, jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2))


# fewer rows than this make a product "few-row" (decoding): bound by reading the weights
FEW_ROWS = 64


def dense(
    x: Array, w: Array, n_in: int = 1, bias: Array | None = None, out_dtype=None, transpose_w: bool = False
) -> Array:
    """jaxllm.kernels.reference.dense, as one 2-D product over the (B*T, in) rows (see the module docstring)."""
    b, t = x.shape[:2]
    if transpose_w:
        w2, out_shape = w.reshape(-1, math.prod(w.shape[-n_in:])), w.shape[:-n_in]
    else:
        w2, out_shape = w.reshape(math.prod(w.shape[:n_in]), -1), w.shape[n_in:]
    x2 = x.reshape(b * t, -1)
    if b * t < FEW_ROWS:
        if not (x.dtype == w.dtype == jnp.bfloat16 and b * t > 1):  # bf16 weights come cast once (decode_layout)
            x2, w2 = x2.astype(jnp.float32), w2.astype(jnp.float32)
        y = contract_last(x2, w2) if transpose_w else jnp.matmul(x2, w2, preferred_element_type=jnp.float32)
    elif x.dtype == jnp.bfloat16:
        y = bf16_matmul(x2, w2, transpose_w)
    else:
        y = jnp.matmul(x2, (w2.T if transpose_w else w2).astype(x.dtype), preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.reshape(-1).astype(jnp.float32)
    return y.astype(out_dtype or x.dtype).reshape(b, t, *out_shape)


def init_cache(batch: int, length: int, kv_heads: int, head_dim: int, dtype) -> dict:
    """One layer's empty cache: k (B*KV,Dh,S) and v (B*KV,S,Dh) in float32 (XLA:CPU's batched bf16 products are
    slow, and converting the cache costs more than reading it twice as wide), pos (B,S) = -1 (an empty slot)."""
    del dtype
    return {
        "k": jnp.zeros((batch * kv_heads, head_dim, length), jnp.float32),
        "v": jnp.zeros((batch * kv_heads, length, head_dim), jnp.float32),
        "pos": jnp.full((batch, length), -1, jnp.int32),
    }


def cached_attention(q: Array, k: Array, v: Array, positions: Array, cache: dict, index: Array) -> tuple[Array, dict]:
    """jaxllm.kernels.reference.cached_attention on this set's cache layout: batched products over the B*KV cache
    rows that read the cache as it is stored, so that no step transposes it."""
    b, t, h, dh = q.shape
    kv = k.shape[2]
    write = lambda full, new, axis: slots.write(full, new, index, axis)
    rows = lambda x, perm: jnp.transpose(x, perm).reshape(-1, *[x.shape[i] for i in perm[2:]])
    cache = {
        "k": write(cache["k"], rows(k, (0, 2, 3, 1)), 2),  # (B*KV,Dh,T) into (B*KV,Dh,S)
        "v": write(cache["v"], rows(v, (0, 2, 1, 3)), 1),  # (B*KV,T,Dh) into (B*KV,S,Dh)
        "pos": write(cache["pos"], positions, 1),
    }
    key_pos = cache["pos"][:, None, :]
    mask = (key_pos >= 0) & (key_pos <= positions[:, :, None])  # (B,T,S)
    s, g = cache["k"].shape[-1], h // kv
    queries = jnp.transpose(q.reshape(b, t, kv, g, dh), (0, 2, 1, 3, 4)).reshape(b * kv, t * g, dh)
    scores = jnp.einsum("nqd,nds->nqs", queries.astype(jnp.float32), cache["k"], preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv, t, g, s) / math.sqrt(dh)
    scores = jnp.where(mask[:, None, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).reshape(b * kv, t * g, s)
    out = jnp.einsum("nqs,nsd->nqd", probs, cache["v"]).reshape(b, kv, t, g, dh)
    return jnp.transpose(out, (0, 2, 1, 3, 4)).reshape(b, t, h, dh).astype(q.dtype), cache


def decode_layout(layers: tuple, params: dict, compute_dtype: str, batch: int) -> tuple[tuple, Array | None, bool]:
    """The weights a decoding step of `batch` rows reads, laid out for few-row products: (layers, head (E,V) or None
    for the parameters' own, whether the MLP's down matrices are stored out by in).
    - bf16 compute, 2 to FEW_ROWS - 1 rows: the matrices cast to bf16 once (half the bytes per step) and the head as
      a bf16 (E,V) matrix;
    - one row, and bf16 batches: the down matrices stored (E,F), so that the product contracts each weight row's
      contiguous F values (a float32 batch keeps (F,E), the faster form there)."""
    bf16 = compute_dtype == "bfloat16" and batch > 1
    if batch >= FEW_ROWS or not (bf16 or batch == 1):
        return layers, None, False
    head = None
    if bf16:
        matrix = lambda path, a: a.ndim >= 2 and not str(path[-1].key).endswith("bias")  # not (H,Dh) biases
        layers = jax.tree.map_with_path(lambda p, a: a.astype(jnp.bfloat16) if matrix(p, a) else a, layers)
        head = (params["embed"].T if params.get("head") is None else params["head"]).astype(jnp.bfloat16)
    transposed = lambda layer: {**layer, "mlp": {**layer["mlp"], "down": layer["mlp"]["down"].T}}
    return tuple(map(transposed, layers)), head, True


CACHE_SEQ_AXES = {"k": 2, "v": 1, "pos": 1}  # the axis of each cache array that grows with its length
