"""The model's fast paths against its plain ones: KV-cache decoding vs the full forward pass, RoPE vs complex
numbers, and remat / scan / attention settings that must not change the numbers."""

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm.config import ModelConfig
from jaxllm.model import _REMAT_POLICIES, Transformer, attend, decode_weights, dense, gelu_tanh, init_cache, rope

TINY = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
FAMILIES = {
    "gpt2": TINY,
    "llama": dataclasses.replace(TINY, family="llama", tie_embeddings=False),
    "llama-gqa": dataclasses.replace(TINY, family="llama", n_kv_head=2, tie_embeddings=False),
}


def build(cfg: ModelConfig, seed: int = 0) -> Transformer:
    with nnx.use_eager_sharding(False):
        return Transformer(cfg, nnx.Rngs(seed))


def tokens_for(cfg: ModelConfig, b: int, t: int, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (b, t), 4, cfg.vocab_size, jnp.int32)


@pytest.mark.parametrize("name", FAMILIES)
def test_prefill_then_one_token_steps_equal_the_full_forward(name):
    cfg = FAMILIES[name]
    model = build(cfg)
    tokens = tokens_for(cfg, 2, 12)
    full, _ = model(tokens)  # (B,T,V)
    cache = init_cache(cfg, 2, 12)
    prefill, cache = model(tokens[:, :5], cache=cache, cache_index=jnp.int32(0))
    np.testing.assert_allclose(prefill, full[:, :5], atol=1e-5)
    for t in range(5, 9):
        positions = jnp.full((2, 1), t, jnp.int32)
        step, cache = model(tokens[:, t:t + 1], positions, cache, jnp.int32(t))
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)
    # as jaxllm.generate decodes: per-layer weights handed in, nothing sliced in a step
    weights = decode_weights(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg, 2)
    assert not weights.down_out_in and weights.head is None
    for t in range(9, 12):
        positions = jnp.full((2, 1), t, jnp.int32)
        step, cache = model(tokens[:, t:t + 1], positions, cache, jnp.int32(t), weights)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_one_row_decodes_on_down_matrices_stored_out_by_in(name):
    cfg = FAMILIES[name]
    model = build(cfg)
    tokens = tokens_for(cfg, 1, 8)
    full, _ = model(tokens)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights = decode_weights(params, cfg, 1)
    assert weights.down_out_in
    chex.assert_trees_all_equal(weights.layers[1]["mlp"]["down"], params["blocks"]["mlp"]["down"][1].T)
    cache = init_cache(cfg, 1, 8)
    prefill, cache = model(tokens[:, :5], cache=cache, cache_index=jnp.int32(0), weights=weights)
    np.testing.assert_allclose(prefill, full[:, :5], atol=1e-5)
    for t in range(5, 8):
        step, cache = model(tokens[:, t:t + 1], jnp.full((1, 1), t, jnp.int32), cache, jnp.int32(t), weights)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_decoding_on_weights_cast_once_matches_the_float32_forward(name):
    """decode_weights casts the matrices (not biases or norms) to bf16 for a batch of a few rows on CPU, the down
    matrices come as (E,F) and the head as (E,V); decoding on them stays within bf16 rounding of the float32
    model."""
    cfg = FAMILIES[name]
    model = build(cfg)
    tokens = tokens_for(cfg, 2, 8)
    full, _ = model(tokens)
    bf16 = dataclasses.replace(cfg, compute_dtype="bfloat16")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights = decode_weights(params, bf16, 2)
    dtypes = {"/".join(str(k.key) for k in path): a.dtype for path, a in jax.tree.leaves_with_path(weights.layers[0])}
    assert dtypes["attn/q"] == dtypes["mlp/down"] == weights.head.dtype == jnp.bfloat16 and weights.down_out_in
    chex.assert_shape(weights.layers[0]["mlp"]["down"], (cfg.n_embd, cfg.hidden))
    assert all(dtypes[n] == jnp.float32 for n in dtypes if n.endswith(("bias", "scale")))
    chex.assert_shape(weights.head, (cfg.n_embd, cfg.vocab_size))
    model_bf16 = nnx.merge(nnx.graphdef(build(bf16)), nnx.state(model, nnx.Param))
    cache = init_cache(bf16, 2, 8)
    _, cache = model_bf16(tokens[:, :4], cache=cache, cache_index=jnp.int32(0), weights=weights)
    for t in range(4, 8):
        positions = jnp.full((2, 1), t, jnp.int32)
        step, cache = model_bf16(tokens[:, t:t + 1], positions, cache, jnp.int32(t), weights)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=0.05 * float(jnp.abs(full).max()))
        assert step.dtype == jnp.float32


@pytest.mark.parametrize("name", FAMILIES)
def test_left_padded_rows_decode_like_unpadded_prompts(name):
    """A short prompt padded on the left (positions -1) gives the logits it gives alone."""
    cfg = FAMILIES[name]
    model = build(cfg)
    short, long = tokens_for(cfg, 1, 3, seed=2), tokens_for(cfg, 1, 7, seed=3)
    alone, _ = model(jnp.concatenate([short, tokens_for(cfg, 1, 2, seed=4)], axis=1))  # (1,5,V)
    batch = jnp.concatenate([jnp.pad(short, ((0, 0), (4, 0))), long])  # (2,7)
    positions = jnp.stack([jnp.concatenate([jnp.full(4, -1), jnp.arange(3)]), jnp.arange(7)]).astype(jnp.int32)
    cache = init_cache(cfg, 2, 9)
    logits, cache = model(batch, positions, cache, jnp.int32(0))
    np.testing.assert_allclose(logits[0, -1], alone[0, 2], atol=1e-5)
    next_tokens = jnp.concatenate([tokens_for(cfg, 1, 2, seed=4)[:, :1], tokens_for(cfg, 1, 1, seed=5)])
    step, _ = model(next_tokens, positions[:, -1:] + 1, cache, jnp.int32(7))
    np.testing.assert_allclose(step[0, 0], alone[0, 3], atol=1e-5)


def test_rope_equals_complex_rotation():
    x = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))  # (B,T,N,Dh)
    positions = jnp.array([[0, 1, 2, 3, 4], [7, 9, 11, 13, 100]], jnp.int32)
    theta = 500000.0
    half = 4
    freqs = theta ** (-np.arange(half) / half)  # (Dh/2,)
    xn = np.asarray(x, np.float64)
    z = xn[..., :half] + 1j * xn[..., half:]  # pairs (i, i + Dh/2) as one complex number
    rotated = z * np.exp(1j * np.asarray(positions)[:, :, None, None] * freqs)
    expected = np.concatenate([rotated.real, rotated.imag], axis=-1)
    np.testing.assert_allclose(rope(x, positions, theta), expected, atol=1e-4)


def loss_and_grads(cfg: ModelConfig, params, tokens):
    graphdef, _ = nnx.split(build(cfg), nnx.Param)

    def loss(p):
        logits, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_remat_scan_and_attention_settings_change_nothing(name):
    cfg = FAMILIES[name]
    params = nnx.state(build(cfg), nnx.Param)
    tokens = tokens_for(cfg, 2, 9)
    ref_loss, ref_grads = loss_and_grads(cfg, params, tokens)
    for change in ({"remat": "full"}, {"remat": "save_matmuls"}, {"remat": "save_attention"}, {"scan_layers": False},
                   {"attention": "explicit"}, {"remat": "full", "scan_layers": False}):
        loss, grads = loss_and_grads(dataclasses.replace(cfg, **change), params, tokens)
        np.testing.assert_allclose(loss, ref_loss, atol=1e-6, err_msg=str(change))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=str(change))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = dataclasses.replace(FAMILIES["llama-gqa"], compute_dtype="bfloat16")
    model = build(cfg)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    logits, _ = model(tokens_for(cfg, 2, 8))
    reference, _ = build(dataclasses.replace(cfg, compute_dtype="float32"))(tokens_for(cfg, 2, 8))
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, reference, atol=0.05)


@pytest.mark.parametrize("transpose_w", [False, True])
@pytest.mark.parametrize("k, n", [(48, 80), (80, 48)])  # either x or dy is the smaller one to transpose
def test_bfloat16_dense_on_cpu_matches_float32_values_and_gradients(transpose_w, k, n):
    """The CPU bf16 path (custom VJP with materialised transposes) computes the same products as float32."""
    kx, kw, kb, kd = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (8, 8, k))  # 64 rows: fewer go the decoding way (float32 products)
    w = jax.random.normal(kw, (n, k) if transpose_w else (k, n)) / np.sqrt(k)
    bias = jax.random.normal(kb, (n,))
    dy = jax.random.normal(kd, (8, 8, n))

    def loss(x, w, bias, dtype):
        y = dense(x.astype(dtype), w, bias=None if transpose_w else bias, out_dtype=jnp.float32,
                  transpose_w=transpose_w)
        return jnp.sum(y * dy)

    ref = jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, bias, jnp.float32)
    got = jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, bias, jnp.bfloat16)
    assert got[1][1].dtype == jnp.float32  # the weight gradient is not rounded to bf16
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=0.02 * scale)


def test_bfloat16_training_step_runs_every_projection_as_a_bf16_matmul():
    """XLA:CPU's fast bf16 kernel takes only row-major operands in two forms (see cpu_kernels); any other matmul it
    silently runs in float32. In the compiled gradient of the bf16 model, every weight-sized product has bf16
    operands."""
    cfg = dataclasses.replace(FAMILIES["gpt2"], compute_dtype="bfloat16", n_embd=64, vocab_size=128,
                              scan_layers=False)  # unrolled: each layer's products appear in the HLO
    graphdef, params = nnx.split(build(cfg), nnx.Param)
    tokens = tokens_for(cfg, 4, 16)  # 64 rows: fewer go the decoding way (float32 products)

    def loss(params):
        logits, _ = nnx.merge(graphdef, params)(tokens)
        return jnp.mean(logits)

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    shapes = dict(re.findall(r"(%[\w.-]+) = (\w+\[[\d,]*\])", hlo))  # every value's dtype and dims
    products = [[shapes[name] for name in operands.split(", ")]
                for operands in re.findall(r" dot\((%[\w.-]+, %[\w.-]+)\)", hlo)]
    weight_sized = [p for p in products if any(str(cfg.n_embd) in re.findall(r"\d+", s) for s in p)]
    assert len(weight_sized) >= 3 * 6 * cfg.n_layer, products  # forward, dx, dw of the six projections a layer
    assert all(a.startswith("bf16") and b.startswith("bf16") for a, b in weight_sized), weight_sized


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 0.03)])
def test_cpu_causal_attention_matches_the_explicit_one(dtype, tolerance):
    """The CPU training attention (custom VJP over row-major batched products), grouped heads included, against
    the explicit einsum implementation in float32: values and all three gradients."""
    kq, kk, kv, kd = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (2, 16, 4, 8))
    k, v = jax.random.normal(kk, (2, 16, 2, 8)), jax.random.normal(kv, (2, 16, 2, 8))
    d_out = jax.random.normal(kd, (2, 16, 4, 8))

    def loss(q, k, v, dtype, impl):
        out = attend(q.astype(dtype), k.astype(dtype), v.astype(dtype), None, impl)
        assert out.dtype == dtype
        return jnp.sum(out.astype(jnp.float32) * d_out)

    ref = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v, jnp.float32, "explicit")
    got = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v, dtype, "xla")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=tolerance * float(jnp.max(jnp.abs(b))))
    # causal: the first query attends only to the first key, so its output is v[:, 0] (to the dtype's rounding)
    out = attend(q.astype(dtype), k.astype(dtype), v.astype(dtype), None, "xla")
    np.testing.assert_allclose(np.asarray(out[:, 0], np.float32), np.repeat(v[:, 0], 2, axis=1), atol=tolerance)


@pytest.mark.parametrize("remat, exps", [("full", 3), ("save_matmuls", 2), ("save_attention", 2)])
def test_remat_policies_that_keep_the_attention_skip_its_forward_in_the_backward_pass(remat, exps):
    """Counted in the gradient's jaxpr: the softmax's exponential runs once forward and once in the backward pass
    (probabilities recomputed from the kept normaliser); 'full' keeps nothing, so it also reruns the forward."""
    q = jax.random.normal(jax.random.key(0), (2, 16, 4, 8))
    layer = jax.checkpoint(lambda q: attend(q, q, q, None, "xla"), policy=_REMAT_POLICIES[remat])
    jaxpr = jax.make_jaxpr(jax.grad(lambda q: jnp.sum(layer(q))))(q)
    assert str(jaxpr).count(" exp ") == exps, str(jaxpr)


def test_gelu_in_sigmoid_form_is_the_tanh_approximation():
    x = jnp.linspace(-8.0, 8.0, 2001)
    x64 = np.asarray(x, np.float64)  # the tanh form loses digits to 1 + tanh(z) ~ 0 in float32; not in float64
    np.testing.assert_allclose(gelu_tanh(x), 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3))),
                               atol=2e-6)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(gelu_tanh(x)))(x),
                               jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=True)))(x), atol=1e-5)
