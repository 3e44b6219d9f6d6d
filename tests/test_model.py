"""The model under every kernel set: KV-cache decoding vs the full forward pass, RoPE vs complex numbers, and remat
and scan settings that must not change the numbers. (The kernel sets against each other: test_kernels.py.)"""

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm.config import ModelConfig
from jaxllm.inference.cache import decode_weights, init_cache
from jaxllm.model.transformer import Transformer, gelu_tanh, rope
from tests.conftest import random_model

TINY = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, compute_dtype="float32")
FAMILIES = {
    "gpt2": TINY,
    "llama": dataclasses.replace(TINY, family="llama", tie_embeddings=False),
    "llama-gqa": dataclasses.replace(TINY, family="llama", n_kv_head=2, tie_embeddings=False),
}


def family(name: str, kernel_set: str, **changes) -> ModelConfig:
    return dataclasses.replace(FAMILIES[name], kernels=kernel_set, **changes)


def build(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return random_model(cfg, seed)


def tokens_for(cfg: ModelConfig, b: int, t: int, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (b, t), 4, cfg.vocab_size, jnp.int32)


@pytest.mark.parametrize("name", FAMILIES)
def test_prefill_then_one_token_steps_equal_the_full_forward(name, kernel_set):
    cfg = family(name, kernel_set)
    model = build(cfg)
    tokens = tokens_for(cfg, 2, 12)
    full, _ = model(tokens)  # (B,T,V)
    cache = init_cache(cfg, 2, 12)
    prefill, cache = model(tokens[:, :5], cache=cache, cache_index=jnp.int32(0))
    np.testing.assert_allclose(prefill, full[:, :5], atol=1e-5)
    for t in range(5, 9):
        positions = jnp.full((2, 1), t, jnp.int32)
        step, cache = model(tokens[:, t : t + 1], positions, cache, jnp.int32(t))
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)
    # as jaxllm.generate decodes: per-layer weights handed in, nothing sliced in a step
    weights = decode_weights(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg, 2)
    assert not weights.down_out_in and weights.head is None
    for t in range(9, 12):
        positions = jnp.full((2, 1), t, jnp.int32)
        step, cache = model(tokens[:, t : t + 1], positions, cache, jnp.int32(t), weights)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_one_row_decodes_on_the_kernel_sets_decoding_layout(name, kernel_set):
    """xla_cpu stores the down matrices out by in for one row; the reference reads the weights as they are."""
    cfg = family(name, kernel_set)
    model = build(cfg)
    tokens = tokens_for(cfg, 1, 8)
    full, _ = model(tokens)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights = decode_weights(params, cfg, 1)
    assert weights.down_out_in == (kernel_set == "xla_cpu")
    down = params["blocks"]["mlp"]["down"][1]
    chex.assert_trees_all_equal(weights.layers[1]["mlp"]["down"], down.T if weights.down_out_in else down)
    cache = init_cache(cfg, 1, 8)
    prefill, cache = model(tokens[:, :5], cache=cache, cache_index=jnp.int32(0), weights=weights)
    np.testing.assert_allclose(prefill, full[:, :5], atol=1e-5)
    for t in range(5, 8):
        step, cache = model(tokens[:, t : t + 1], jnp.full((1, 1), t, jnp.int32), cache, jnp.int32(t), weights)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_decoding_matches_the_float32_forward(name, kernel_set):
    """bf16 decoding stays within bf16 rounding of the float32 model. xla_cpu casts the matrices (not biases or
    norms) to bf16 once for a batch of a few rows, the down matrices as (E,F) and the head as (E,V)."""
    cfg = family(name, kernel_set)
    model = build(cfg)
    tokens = tokens_for(cfg, 2, 8)
    full, _ = model(tokens)
    bf16 = dataclasses.replace(cfg, compute_dtype="bfloat16")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights = decode_weights(params, bf16, 2)
    dtypes = {"/".join(str(k.key) for k in path): a.dtype for path, a in jax.tree.leaves_with_path(weights.layers[0])}
    if kernel_set == "xla_cpu":
        assert dtypes["attn/q"] == dtypes["mlp/down"] == weights.head.dtype == jnp.bfloat16 and weights.down_out_in
        chex.assert_shape(weights.layers[0]["mlp"]["down"], (cfg.n_embd, cfg.hidden))
        assert all(dtypes[n] == jnp.float32 for n in dtypes if n.endswith(("bias", "scale")))
        chex.assert_shape(weights.head, (cfg.n_embd, cfg.vocab_size))
    else:
        assert set(dtypes.values()) == {jnp.dtype(jnp.float32)} and weights.head is None
    model_bf16 = nnx.merge(nnx.graphdef(build(bf16)), nnx.state(model, nnx.Param))
    cache = init_cache(bf16, 2, 8)
    _, cache = model_bf16(tokens[:, :4], cache=cache, cache_index=jnp.int32(0), weights=weights)
    for t in range(4, 8):
        positions = jnp.full((2, 1), t, jnp.int32)
        step, cache = model_bf16(tokens[:, t : t + 1], positions, cache, jnp.int32(t), weights)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=0.05 * float(jnp.abs(full).max()))
        assert step.dtype == jnp.float32


@pytest.mark.parametrize("name", FAMILIES)
def test_left_padded_rows_decode_like_unpadded_prompts(name, kernel_set):
    """A short prompt padded on the left (positions -1) gives the logits it gives alone."""
    cfg = family(name, kernel_set)
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
def test_remat_and_scan_settings_change_nothing(name, kernel_set):
    cfg = family(name, kernel_set)
    params = nnx.state(build(cfg), nnx.Param)
    tokens = tokens_for(cfg, 2, 9)
    ref_loss, ref_grads = loss_and_grads(cfg, params, tokens)
    for change in (
        {"remat": "full"},
        {"remat": "save_matmuls"},
        {"remat": "save_attention"},
        {"scan_layers": False},
        {"remat": "full", "scan_layers": False},
    ):
        loss, grads = loss_and_grads(dataclasses.replace(cfg, **change), params, tokens)
        np.testing.assert_allclose(loss, ref_loss, atol=1e-6, err_msg=str(change))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=str(change))


def test_bfloat16_compute_keeps_float32_params_and_logits(kernel_set):
    cfg = family("llama-gqa", kernel_set, compute_dtype="bfloat16")
    model = build(cfg)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    logits, _ = model(tokens_for(cfg, 2, 8))
    reference, _ = build(dataclasses.replace(cfg, compute_dtype="float32"))(tokens_for(cfg, 2, 8))
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, reference, atol=0.05)


def test_bfloat16_training_step_on_xla_cpu_runs_every_projection_as_a_bf16_matmul():
    """XLA:CPU's fast bf16 kernel takes only row-major operands in two forms (see jaxllm.kernels.xla_cpu); any other
    matmul it silently runs in float32. In the compiled gradient of the bf16 model on the xla_cpu kernels, every
    weight-sized product has bf16 operands."""
    cfg = family(
        "gpt2", "xla_cpu", compute_dtype="bfloat16", n_embd=64, vocab_size=128, scan_layers=False
    )  # unrolled: each layer's products appear in the HLO
    graphdef, params = nnx.split(build(cfg), nnx.Param)
    tokens = tokens_for(cfg, 4, 16)  # 64 rows: fewer go the decoding way (float32 products)

    def loss(params):
        logits, _ = nnx.merge(graphdef, params)(tokens)
        return jnp.mean(logits)

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    shapes = dict(re.findall(r"(%[\w.-]+) = (\w+\[[\d,]*\])", hlo))  # every value's dtype and dims
    products = [
        [shapes[name] for name in operands.split(", ")] for operands in re.findall(r" dot\((%[\w.-]+, %[\w.-]+)\)", hlo)
    ]
    weight_sized = [p for p in products if any(str(cfg.n_embd) in re.findall(r"\d+", s) for s in p)]
    assert len(weight_sized) >= 3 * 6 * cfg.n_layer, products  # forward, dx, dw of the six projections a layer
    assert all(a.startswith("bf16") and b.startswith("bf16") for a, b in weight_sized), weight_sized


def test_gelu_in_sigmoid_form_is_the_tanh_approximation():
    x = jnp.linspace(-8.0, 8.0, 2001)
    x64 = np.asarray(x, np.float64)  # the tanh form loses digits to 1 + tanh(z) ~ 0 in float32; not in float64
    np.testing.assert_allclose(
        gelu_tanh(x), 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3))), atol=2e-6
    )
    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(gelu_tanh(x)))(x),
        jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=True)))(x),
        atol=1e-5,
    )
