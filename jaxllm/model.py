"""The decoder-only transformer, in Flax NNX: GPT-2 and Llama families from one set of layers.

gpt2:  learned positions, pre-LayerNorm, GELU MLP, biases, tied embeddings by default.
llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention (n_kv_head), no biases.

Every parameter carries logical axis names (metadata `out_sharding`); `jaxllm.sharding` maps them to mesh axes,
so nothing here mentions a mesh. Layers are created stacked (leading axis 'layers') and run with `lax.scan`, or
unrolled over the same stacked parameters (`scan_layers=False`), so both settings share one checkpoint layout.
Parameters are float32; `compute_dtype` casts them for the matmuls; norms, softmax and logits stay float32.

A KV cache (`init_cache`) lets decoding attend to past keys without recomputing them: see `jaxllm.generate`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxllm import cpu_kernels, sharding
from jaxllm.config import ModelConfig

Array = jax.Array
_normal = nnx.initializers.normal


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], names: tuple[str, ...], std: float | None) -> nnx.Param:
    """A float32 parameter: normal(std) if std is given, else zeros (std=None) or ones (std=0)."""
    if std is None:
        value = jnp.zeros(shape, jnp.float32)
    elif std == 0:
        value = jnp.ones(shape, jnp.float32)
    else:
        value = _normal(std)(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, out_sharding=names)


class Norm(nnx.Module):
    """LayerNorm (gpt2) or RMSNorm (llama), computed in float32."""

    def __init__(self, cfg: ModelConfig):
        self.rms = cfg.family == "llama"
        self.eps = cfg.norm_eps
        self.scale = _param(None, (cfg.n_embd,), ("embed",), 0)
        self.bias = None if self.rms else _param(None, (cfg.n_embd,), ("embed",), None)

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        if self.rms:
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
            y = y * self.scale[...]
        else:
            mean = jnp.mean(x32, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
            y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


# fewer rows than this make a product "few-row" (decoding): bound by reading the weights, see dense and decode_weights
FEW_ROWS = 64


def dense(x: Array, w: Array, n_in: int = 1, bias: Array | None = None, out_dtype=None,
          transpose_w: bool = False) -> Array:
    """Contracts x's last n_in axes with w's first n_in axes, plus bias, as one 2-D matmul over (B*T, in) rows;
    w is cast to x's dtype (the compute dtype), the result is out_dtype (default: x's dtype).

    x: (B,T,*in), w: (*in, *out), bias: (*out) -> (B,T,*out); with transpose_w, w is (*out, *in) (a tied output
    head, or a down matrix laid out for decoding). Written 2-D on purpose: XLA:CPU computes the weight gradient of
    a 3-D dot_general about 5x slower than of the same product flattened (measured here: 197 ms vs 39 ms for a
    16x256x256 by 256x1024 product)."""
    b, t = x.shape[:2]
    if transpose_w:
        w2, out_shape = w.reshape(-1, math.prod(w.shape[-n_in:])), w.shape[:-n_in]
    else:
        w2, out_shape = w.reshape(math.prod(w.shape[:n_in]), -1), w.shape[n_in:]
    x2 = x.reshape(b * t, -1)
    on_cpu = cpu_kernels.on_cpu()
    if on_cpu and b * t < FEW_ROWS:  # decoding: the product is bound by reading the weights
        if not (x.dtype == w.dtype == jnp.bfloat16 and b * t > 1):  # bf16 weights: cast once (decode_weights)
            # XLA:CPU's bf16 kernel takes no single row (14.9 against 1.2 ms in float32 for 1 x 1536 by
            # 1536 x 9216 here): float32 parameters are read as they are
            x2, w2 = x2.astype(jnp.float32), w2.astype(jnp.float32)
        y = (cpu_kernels.contract_last(x2, w2) if transpose_w  # a transposed w: contracted on its own last axis
             else jnp.matmul(x2, w2, preferred_element_type=jnp.float32))
    elif on_cpu and x.dtype == jnp.bfloat16:  # float32 result: the bias is added before rounding, as in a GEMM epilogue
        y = cpu_kernels.bf16_matmul(x2, w2, transpose_w)
    else:
        y = jnp.matmul(x2, (w2.T if transpose_w else w2).astype(x.dtype), preferred_element_type=out_dtype)
    if bias is not None:
        y = y + bias.reshape(-1).astype(y.dtype)
    return y.astype(out_dtype or x.dtype).reshape(b, t, *out_shape)


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding, rotating pairs (i, i + Dh/2) as Llama's HF layout does. x: (B,T,N,Dh), positions: (B,T)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))  # (Dh/2,)
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # (B,T,1,Dh/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attend(q: Array, k: Array, v: Array, mask: Array | None, impl: str) -> Array:
    """Softmax attention with grouped KV heads. q: (B,T,H,Dh); k, v: (B,S,KV,Dh); mask: (B,T,S) bool or None
    (None: causal over T == S). Returns (B,T,H,Dh). Scores and softmax are float32 in every implementation."""
    if impl == "xla" and mask is None and cpu_kernels.on_cpu():
        # training on XLA:CPU (where jax.nn.dot_product_attention is XLA's plain composition): row-major batched
        # products in both passes and a hand-written softmax gradient
        group = q.shape[2] // k.shape[2]
        return cpu_kernels.causal_attention(q, jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2))
    if impl == "xla":
        return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None],
                                            is_causal=mask is None)
    b, t, h, dh = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) / math.sqrt(dh)
    if mask is None:
        mask = jnp.tril(jnp.ones((t, k.shape[1]), bool))[None]
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, dh)


def attend_cached(q: Array, k: Array, v: Array, mask: Array, impl: str) -> Array:
    """Attention to a KV cache in its stored layouts (init_cache), k (B*KV,Dh,S) and v (B*KV,S,Dh). q: (B,T,H,Dh);
    mask: (B,T,S). Off CPU with impl 'xla', jax.nn.dot_product_attention on (B,S,KV,Dh) views; otherwise batched
    products over the B*KV cache rows that read the cache as it is stored."""
    b, t, h, dh = q.shape
    kv, s = k.shape[0] // b, k.shape[-1]
    if impl == "xla" and not cpu_kernels.on_cpu():
        k = jnp.transpose(k.reshape(b, kv, dh, s), (0, 3, 1, 2))
        return attend(q, k.astype(q.dtype), jnp.transpose(v.reshape(b, kv, s, dh), (0, 2, 1, 3)).astype(q.dtype),
                      mask, impl)
    g = h // kv
    queries = jnp.transpose(q.reshape(b, t, kv, g, dh), (0, 2, 1, 3, 4)).reshape(b * kv, t * g, dh)
    scores = jnp.einsum("nqd,nds->nqs", queries.astype(k.dtype), k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv, t, g, s) / math.sqrt(dh)
    scores = jnp.where(mask[:, None, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b * kv, t * g, s)
    out = jnp.einsum("nqs,nsd->nqd", probs, v).reshape(b, kv, t, g, dh)
    return jnp.transpose(out, (0, 2, 1, 3, 4)).reshape(b, t, h, dh).astype(q.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        e, h, kv, dh = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim
        bias = cfg.family == "gpt2"
        out_std = 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2: residual projections scaled by depth
        self.cfg = cfg
        self.q = _param(rngs, (e, h, dh), ("embed", "heads", "head_dim"), 0.02)
        self.k = _param(rngs, (e, kv, dh), ("embed", "kv_heads", "head_dim"), 0.02)
        self.v = _param(rngs, (e, kv, dh), ("embed", "kv_heads", "head_dim"), 0.02)
        self.o = _param(rngs, (h, dh, e), ("heads", "head_dim", "embed"), out_std)
        self.q_bias = _param(None, (h, dh), ("heads", "head_dim"), None) if bias else None
        self.k_bias = _param(None, (kv, dh), ("kv_heads", "head_dim"), None) if bias else None
        self.v_bias = _param(None, (kv, dh), ("kv_heads", "head_dim"), None) if bias else None
        self.o_bias = _param(None, (e,), ("embed",), None) if bias else None

    def __call__(self, x: Array, positions: Array, cache: dict | None, cache_index: Array | None):
        """x: (B,T,E). With this layer's cache (see init_cache), writes this call's keys at cache_index, in place,
        and attends to every cached key whose position is valid (>= 0) and not after the query's."""
        cfg = self.cfg
        bias = (lambda b: None if b is None else b[...])
        q = dense(x, self.q[...], bias=bias(self.q_bias))  # (B,T,H,Dh)
        k = dense(x, self.k[...], bias=bias(self.k_bias))  # (B,T,KV,Dh)
        v = dense(x, self.v[...], bias=bias(self.v_bias))
        if cfg.family == "llama":
            q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        if cache is None:
            y = attend(q, k, v, None, cfg.attention)
        else:
            # stored as the attention products read them (see init_cache); this call's T keys written in place
            write = lambda full, new, seq_axis: jax.lax.dynamic_update_slice_in_dim(
                full, new.astype(full.dtype), cache_index, axis=seq_axis)
            rows = lambda x, perm: jnp.transpose(x, perm).reshape(-1, *[x.shape[i] for i in perm[2:]])
            cache = {"k": write(cache["k"], rows(k, (0, 2, 3, 1)), 2),  # (B*KV,Dh,T) into (B*KV,Dh,S)
                     "v": write(cache["v"], rows(v, (0, 2, 1, 3)), 1),  # (B*KV,T,Dh) into (B*KV,S,Dh)
                     "pos": write(cache["pos"], positions, 1)}
            key_pos = cache["pos"]
            mask = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= positions[:, :, None])  # (B,T,S)
            y = attend_cached(q, cache["k"], cache["v"], mask, cfg.attention)
        y = dense(y, self.o[...], n_in=2, bias=bias(self.o_bias))  # (B,T,E)
        return y, cache


def gelu_tanh(x: Array) -> Array:
    """GPT-2's tanh-approximated GELU, in float32, written as x * sigmoid(2z): the same function as
    0.5 x (1 + tanh(z)), z = sqrt(2/pi) (x + 0.044715 x^3). Measured here on a (2048, 1536) bf16 input, forward
    and backward: 2.8 ms, against 16.4 ms for jax.nn.gelu(approximate=True) (XLA:CPU's tanh)."""
    x32 = x.astype(jnp.float32)
    z = math.sqrt(2 / math.pi) * (x32 + 0.044715 * x32 * x32 * x32)
    return (x32 * jax.nn.sigmoid(2 * z)).astype(x.dtype)


def silu(x: Array) -> Array:
    """SiLU in float32 (bf16 elementwise math on XLA:CPU ran at half the speed: 7.2 against 3.7 ms, above)."""
    return jax.nn.silu(x.astype(jnp.float32)).astype(x.dtype)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        e, f = cfg.n_embd, cfg.hidden
        out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        self.gated = cfg.family == "llama"
        self.up = _param(rngs, (e, f), ("embed", "mlp"), 0.02)
        self.gate = _param(rngs, (e, f), ("embed", "mlp"), 0.02) if self.gated else None
        self.down = _param(rngs, (f, e), ("mlp", "embed"), out_std)
        self.up_bias = None if self.gated else _param(None, (f,), ("mlp",), None)
        self.down_bias = None if self.gated else _param(None, (e,), ("embed",), None)

    def __call__(self, x: Array, down_out_in: bool = False) -> Array:
        """down_out_in: the down matrix comes as (E,F), out by in (DecodeWeights)."""
        bias = None if self.gated else self.down_bias[...]
        if self.gated:
            h = silu(dense(x, self.gate[...])) * dense(x, self.up[...])  # (B,T,F)
        else:
            h = gelu_tanh(dense(x, self.up[...], bias=self.up_bias[...]))
        return dense(h, self.down[...], bias=bias, transpose_w=down_out_in)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.norm1 = Norm(cfg)
        self.attn = Attention(cfg, rngs)
        self.norm2 = Norm(cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, cache, cache_index, down_out_in: bool = False):
        y, cache = self.attn(self.norm1(x), positions, cache, cache_index)
        x = x + y
        return x + self.mlp(self.norm2(x), down_out_in), cache


def _lookup(table: Array, row_axis: str, ids: Array) -> Array:
    """table[ids] -> (B,T,E). ZeRO-3 gathers the table's embed shards before the lookup: without these two
    constraints XLA turns the embed-sharded result into a batch-sharded one by rematerialising it whole."""
    table = sharding.constrain(table, (row_axis, None))
    return sharding.constrain(table[ids], ("batch", None, None))


# What the backward pass of a layer keeps from its forward pass; the rest is recomputed. The attention's output and
# normaliser are named by cpu_kernels.causal_attention (training on one CPU device): with them kept, its backward
# pass runs no forward. 'save_attention' keeps only those, so every projection is recomputed: in bf16 on XLA:CPU
# that is cheaper than storing the scanned layers' float32 products (GPT-2 6 x 384, batch 8 x 256, medians of 6
# interleaved rounds in one process: 420 ms a step, against 485 with save_matmuls and 453 with full; keeping the
# projections' bf16 outputs instead: 496), in float32 dearer (1,073 against 1,039 ms with save_matmuls).
_SAVE_ATTENTION = jax.checkpoint_policies.save_only_these_names(*cpu_kernels.SAVED_NAMES)
_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_matmuls": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _SAVE_ATTENTION),
    "save_attention": _SAVE_ATTENTION,
}


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.n_embd), ("vocab", "embed"), 0.02)
        self.pos_embed = (_param(rngs, (cfg.block_size, cfg.n_embd), ("position", "embed"), 0.01)
                          if cfg.family == "gpt2" else None)

        @nnx.split_rngs(splits=cfg.n_layer)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(block_rngs):
            return Block(cfg, block_rngs)

        self.blocks = make_blocks(rngs)
        self.norm = Norm(cfg)
        self.head = None if cfg.tie_embeddings else _param(rngs, (cfg.n_embd, cfg.vocab_size), ("embed", "vocab"), 0.02)

    def __call__(self, tokens: Array, positions: Array | None = None, cache: tuple | None = None,
                 cache_index: Array | None = None, weights: DecodeWeights | None = None) -> tuple[Array, tuple | None]:
        """tokens: (B,T) int32 -> logits (B,T,V) float32, and the updated cache (None without one).

        positions default to 0..T-1; decoding passes each row's own positions (-1 marks left padding).
        With a cache (init_cache: one per layer) the layers run one by one; decoding also passes the weights
        prepared for it (decode_weights), so that no step copies a layer's weights out of the stack (slicing a
        stacked array inside a compiled step copies it, and a one-token step is bound by reading the weights)."""
        cfg = self.cfg
        dt = jnp.dtype(cfg.compute_dtype)
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x = _lookup(self.embed[...], "vocab", tokens)
        if self.pos_embed is not None:
            x = x + _lookup(self.pos_embed[...], "position", jnp.maximum(positions, 0))
        x = x.astype(dt)

        graphdef, block_state = nnx.split(self.blocks)

        down_out_in = weights is not None and weights.down_out_in

        def layer(x, state, layer_cache=None):
            x = sharding.constrain(x, ("batch", None, None))
            return nnx.merge(graphdef, state)(x, positions, layer_cache, cache_index, down_out_in)

        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[cfg.remat])
        if cache is not None:  # prefill and decoding: each layer writes its own cache in place
            caches = []
            for state, layer_cache in zip(split_layers(block_state) if weights is None else weights.layers, cache):
                x, layer_cache = layer(x, state, layer_cache)
                caches.append(layer_cache)
            cache = tuple(caches)
        elif cfg.scan_layers:
            x, _ = jax.lax.scan(lambda x, state: layer(x, state), x, block_state)
        else:
            for state in split_layers(block_state):
                x, _ = layer(x, state)

        x = self.norm(x)
        if weights is not None and weights.head is not None:
            logits = dense(x, weights.head, out_dtype=jnp.float32)
        elif self.head is None:  # tied: the embedding table (V,E) is the head, transposed
            logits = dense(x, self.embed[...], out_dtype=jnp.float32, transpose_w=True)  # (B,T,V)
        else:
            logits = dense(x, self.head[...], out_dtype=jnp.float32)
        return logits, cache


def split_layers(params) -> tuple:
    """Stacked block parameters (params["blocks"], or that subtree itself) as one state per layer."""
    blocks = params["blocks"] if "blocks" in params else params
    n_layer = jax.tree.leaves(blocks)[0].shape[0]
    return tuple(jax.tree.map(lambda a: a[i], blocks) for i in range(n_layer))


@struct.dataclass
class DecodeWeights:
    """The weights a decoding step reads, made once per generation by decode_weights."""
    layers: tuple  # one parameter state per layer
    head: Array | None  # the output head as (E,V); None: the parameters' own
    down_out_in: bool = struct.field(pytree_node=False)  # the MLP's down matrices stored (E,F), out by in


def decode_weights(params: dict, cfg: ModelConfig, batch: int) -> DecodeWeights:
    """Per-layer weights for decoding `batch` rows, laid out for XLA:CPU's few-row products (measured on GPT-2
    6 x 384 here):
    - bf16 compute, 2 to 63 rows: the matrices cast to bf16 (half the bytes per step; XLA:CPU's bf16 kernel takes no
      single row, see dense) and the head as a bf16 (E,V) matrix;
    - one row, and bf16 with 2 to 63: the MLP's down matrices transposed to (E,F), so that the product contracts
      each weight row's contiguous F values: 68 against 91 us for one row in float32, 64 against 91 us for 8 rows
      in bf16 (in float32 at 8 rows it is slower: 168 against 127 us, so that case keeps (F,E))."""
    layers = split_layers(params)
    bf16 = cfg.compute_dtype == "bfloat16" and batch > 1
    if not cpu_kernels.on_cpu() or batch >= FEW_ROWS or not (bf16 or batch == 1):
        return DecodeWeights(layers, None, False)
    head = None
    if bf16:
        matrix = lambda path, a: a.ndim >= 2 and not str(path[-1].key).endswith("bias")  # not (H,Dh) biases
        layers = jax.tree.map_with_path(lambda p, a: a.astype(jnp.bfloat16) if matrix(p, a) else a, layers)
        head = (params["embed"].T if params.get("head") is None else params["head"]).astype(jnp.bfloat16)
    transposed = lambda layer: {**layer, "mlp": {**layer["mlp"], "down": layer["mlp"]["down"].T}}
    return DecodeWeights(tuple(map(transposed, layers)), head, True)


def init_cache(cfg: ModelConfig, batch: int, length: int) -> tuple:
    """An empty KV cache for `length` positions, one per layer: k (B*KV,Dh,S) and v (B*KV,S,Dh), the layouts the
    attention products read, so that no step transposes a cache; pos (B,S) = -1 (empty). Batch and heads share one
    axis: with separate (B,KV) axes, XLA:CPU copied every layer's cache twice per step at batch 1 (a size-1 axis
    defeats its in-place update). In the compute dtype, except float32 on CPU: XLA:CPU's batched bf16 products are
    slow, and converting the cache costs more than reading it twice as wide (batch-8 attention over six layers
    here: 0.9 ms from float32, 1.7 to 2.8 ms from bf16)."""
    kv, dh = cfg.kv_heads, cfg.head_dim
    dt = jnp.float32 if cpu_kernels.on_cpu() else jnp.dtype(cfg.compute_dtype)
    return tuple({"k": jnp.zeros((batch * kv, dh, length), dt), "v": jnp.zeros((batch * kv, length, dh), dt),
                  "pos": jnp.full((batch, length), -1, jnp.int32)} for _ in range(cfg.n_layer))


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model's structure with ShapeDtypeStruct leaves: no memory allocated."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))


def count_params(cfg: ModelConfig) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract_model(cfg), nnx.Param)))
