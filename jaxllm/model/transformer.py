"""The decoder-only transformer, in Flax NNX: GPT-2 and Llama families from one set of layers.

gpt2:  learned positions, pre-LayerNorm, GELU MLP, biases, tied embeddings by default.
llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention (n_kv_head), no biases.

Every parameter carries logical axis names (metadata `out_sharding`); `jaxllm.sharding` maps them to mesh axes,
so nothing here mentions a mesh. Layers are created stacked (leading axis 'layers') and run with `lax.scan`, or
unrolled over the same stacked parameters (`scan_layers=False`), so both settings share one checkpoint layout.
Parameters are float32; `compute_dtype` casts them for the matmuls; norms, softmax and logits stay float32.

The products and the attention are the kernel set's that `cfg.kernels` names (jaxllm.kernels: the reference
math, or a fast path for one machine); this module never asks which backend it runs on. A KV cache lets decoding
attend to past keys without recomputing them: its layout is the kernel set's (see jaxllm.inference).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxllm import kernels, sharding
from jaxllm.config import ModelConfig
from jaxllm.kernels import names

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


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding, rotating pairs (i, i + Dh/2) as Llama's HF layout does. x: (B,T,N,Dh), positions: (B,T)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))  # (Dh/2,)
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # (B,T,1,Dh/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


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

    def __call__(self, x: Array, positions: Array, cache: dict | None, cache_index: Array | None, ops):
        """x: (B,T,E). With this layer's cache, writes this call's keys at cache_index, in place, and attends to
        every cached key whose position is valid (>= 0) and not after the query's. ops: the kernel set."""
        cfg = self.cfg
        bias = lambda b: None if b is None else b[...]
        q = ops.dense(x, self.q[...], bias=bias(self.q_bias))  # (B,T,H,Dh)
        k = ops.dense(x, self.k[...], bias=bias(self.k_bias))  # (B,T,KV,Dh)
        v = ops.dense(x, self.v[...], bias=bias(self.v_bias))
        if cfg.family == "llama":
            q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        if cache is None:
            y = ops.causal_attention(q, k, v)  # (B,T,H,Dh)
        else:
            y, cache = ops.cached_attention(q, k, v, positions, cache, cache_index)
        y = ops.dense(y, self.o[...], n_in=2, bias=bias(self.o_bias))  # (B,T,E)
        return y, cache


def gelu_tanh(x: Array) -> Array:
    """GPT-2's tanh-approximated GELU, in float32, written as x * sigmoid(2z): the same function as
    0.5 x (1 + tanh(z)), z = sqrt(2/pi) (x + 0.044715 x^3), and cheaper on backends with a slow tanh (XLA:CPU)."""
    x32 = x.astype(jnp.float32)
    z = math.sqrt(2 / math.pi) * (x32 + 0.044715 * x32 * x32 * x32)
    return (x32 * jax.nn.sigmoid(2 * z)).astype(x.dtype)


def silu(x: Array) -> Array:
    """SiLU, computed in float32 as the norms are."""
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

    def __call__(self, x: Array, ops, down_out_in: bool = False) -> Array:
        """ops: the kernel set; down_out_in: the down matrix comes as (E,F), out by in (DecodeWeights)."""
        bias = None if self.gated else self.down_bias[...]
        if self.gated:
            h = silu(ops.dense(x, self.gate[...])) * ops.dense(x, self.up[...])  # (B,T,F)
        else:
            h = gelu_tanh(ops.dense(x, self.up[...], bias=self.up_bias[...]))
        return ops.dense(h, self.down[...], bias=bias, transpose_w=down_out_in)


# The blocks' projection matrices: name -> (the block's submodule holding it, its input axes after the leading
# 'layers' axis: those ops.dense contracts; the remaining axes are its outputs). Muon and LoRA read the layout here.
PROJECTIONS = {
    "q": ("attn", 1),
    "k": ("attn", 1),
    "v": ("attn", 1),
    "o": ("attn", 2),
    "up": ("mlp", 1),
    "gate": ("mlp", 1),
    "down": ("mlp", 1),
}


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.norm1 = Norm(cfg)
        self.attn = Attention(cfg, rngs)
        self.norm2 = Norm(cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, cache, cache_index, ops, down_out_in: bool = False):
        y, cache = self.attn(self.norm1(x), positions, cache, cache_index, ops)
        x = x + y
        return x + self.mlp(self.norm2(x), ops, down_out_in), cache


def _lookup(table: Array, row_axis: str, ids: Array) -> Array:
    """table[ids] -> (B,T,E). ZeRO-3 gathers the table's embed shards before the lookup: without these two
    constraints XLA turns the embed-sharded result into a batch-sharded one by rematerialising it whole."""
    table = sharding.constrain(table, (row_axis, None))
    return sharding.constrain(table[ids], ("batch", None, None))


# What the backward pass of a layer keeps from its forward pass; the rest is recomputed. Every kernel set names the
# attention's output ATTENTION_OUT (and a normaliser ATTENTION_LSE where its backward pass reads one), so each
# policy keeps the same tensors on every backend. 'save_attention' keeps only the attention's: every projection is
# recomputed. 'save_matmuls' keeps the projections' outputs too. Which is faster depends on the machine and dtype:
# python -m jaxllm.bench train --model.remat=... measures it.
_SAVE_ATTENTION = jax.checkpoint_policies.save_only_these_names(names.ATTENTION_OUT, names.ATTENTION_LSE)
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_matmuls": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _SAVE_ATTENTION
    ),
    "save_attention": _SAVE_ATTENTION,
}


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.n_embd), ("vocab", "embed"), 0.02)
        self.pos_embed = (
            _param(rngs, (cfg.block_size, cfg.n_embd), ("position", "embed"), 0.01) if cfg.family == "gpt2" else None
        )

        @nnx.split_rngs(splits=cfg.n_layer)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(block_rngs):
            return Block(cfg, block_rngs)

        self.blocks = make_blocks(rngs)
        self.norm = Norm(cfg)
        self.head = None if cfg.tie_embeddings else _param(rngs, (cfg.n_embd, cfg.vocab_size), ("embed", "vocab"), 0.02)

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        cache: tuple | None = None,
        cache_index: Array | None = None,
        weights: DecodeWeights | None = None,
    ) -> tuple[Array, tuple | None]:
        """tokens: (B,T) int32 -> logits (B,T,V) float32, and the updated cache (None without one).

        positions default to 0..T-1; decoding passes each row's own positions (-1 marks left padding).
        With a cache (one per layer, jaxllm.inference.cache) the layers run one by one; decoding also passes the
        weights prepared for it (DecodeWeights), so that no step copies a layer's weights out of the stack (slicing
        a stacked array inside a compiled step copies it, and a one-token step is bound by reading the weights)."""
        cfg = self.cfg
        ops = kernels.get(cfg.kernels)
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
            return nnx.merge(graphdef, state)(x, positions, layer_cache, cache_index, ops, down_out_in)

        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat])
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
            logits = ops.dense(x, weights.head, out_dtype=jnp.float32)
        elif self.head is None:  # tied: the embedding table (V,E) is the head, transposed
            logits = ops.dense(x, self.embed[...], out_dtype=jnp.float32, transpose_w=True)  # (B,T,V)
        else:
            logits = ops.dense(x, self.head[...], out_dtype=jnp.float32)
        return logits, cache


def split_layers(params) -> tuple:
    """Stacked block parameters (params["blocks"], or that subtree itself) as one state per layer."""
    blocks = params["blocks"] if "blocks" in params else params
    n_layer = jax.tree.leaves(blocks)[0].shape[0]
    return tuple(jax.tree.map(lambda a: a[i], blocks) for i in range(n_layer))


@struct.dataclass
class DecodeWeights:
    """The weights a decoding step reads, made once per generation (jaxllm.inference.cache.decode_weights)."""

    layers: tuple  # one parameter state per layer
    head: Array | None  # the output head as (E,V); None: the parameters' own
    down_out_in: bool = struct.field(pytree_node=False)  # the MLP's down matrices stored (E,F), out by in


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model's structure with ShapeDtypeStruct leaves: no memory allocated."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))


def count_params(cfg: ModelConfig) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract_model(cfg), nnx.Param)))
