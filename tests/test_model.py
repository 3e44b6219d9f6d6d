"""The model's fast paths against its plain ones: KV-cache decoding vs the full forward pass, RoPE vs complex
numbers, and remat / scan / attention settings that must not change the numbers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm.config import ModelConfig
from jaxllm.model import Transformer, init_cache, rope

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
    for t in range(5, 12):
        positions = jnp.full((2, 1), t, jnp.int32)
        step, cache = model(tokens[:, t:t + 1], positions, cache, jnp.int32(t))
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


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
    for change in ({"remat": "full"}, {"remat": "save_matmuls"}, {"scan_layers": False},
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
