"""The fast kernel sets equal the reference (the portable path GPUs and TPUs run) within stated tolerances: the
products and the attention with their gradients, whole-model logits and gradients, losses over training steps,
greedy generations; remat policies keep the same named tensors in every set; and `auto` resolves as documented.

Tolerances: float32 within 1e-5 of the largest value (the sets differ only in the order of their sums); bf16
within 3% (both round the operands to bf16, at different places).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals

from jaxllm import kernels, sharding
from jaxllm.config import Config, ConfigError, ModelConfig, OptimConfig, TrainConfig
from jaxllm.inference.generate import SamplingConfig, generate_tokens
from jaxllm.kernels import names, probe, reference
from jaxllm.model.transformer import REMAT_POLICIES, abstract_model
from jaxllm.train import step
from tests.conftest import random_model

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 0.03}
FAST_SETS = [name for name in kernels.SETS if name != "reference"]


def close(got, want, dtype, what=""):
    """Each leaf within the tolerance of its largest value (or of a hundredth of the tree's: a gradient that is
    zero in exact arithmetic, such as a key bias's, is rounding noise in both sets)."""
    want = [np.asarray(b, np.float32) for b in jax.tree.leaves(want)]
    floor = max(float(np.abs(b).max()) for b in want) / 100
    for a, b in zip(jax.tree.leaves(got), want):
        np.testing.assert_allclose(
            np.asarray(a, np.float32), b, err_msg=what, atol=TOLERANCE[dtype] * max(float(np.abs(b).max()), floor)
        )


@pytest.mark.parametrize("fast", FAST_SETS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("transpose_w", [False, True])
@pytest.mark.parametrize("rows, k, n", [(64, 48, 80), (64, 80, 48), (2, 48, 80)])  # 2 rows: the decoding form
def test_dense_equals_the_reference_with_gradients(fast, dtype, transpose_w, rows, k, n):
    kx, kw, kb, kd = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (rows // 2, 2, k))
    w = jax.random.normal(kw, (n, k) if transpose_w else (k, n)) / np.sqrt(k)
    bias = jax.random.normal(kb, (n,))
    dy = jax.random.normal(kd, (rows // 2, 2, n))

    def loss(ops, x, w, bias):
        y = ops.dense(x.astype(dtype), w, bias=bias, out_dtype=jnp.float32, transpose_w=transpose_w)
        return jnp.sum(y * dy)

    want = jax.value_and_grad(loss, argnums=(1, 2, 3))(reference, x, w, bias)
    got = jax.value_and_grad(loss, argnums=(1, 2, 3))(kernels.get(fast), x, w, bias)
    assert got[1][1].dtype == jnp.float32  # the weight gradient is not rounded to the compute dtype
    close(got, want, dtype)


@pytest.mark.parametrize("fast", FAST_SETS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_causal_attention_equals_the_reference_with_gradients(fast, dtype):
    """Grouped heads (4 query heads on 2 KV heads), values and all three gradients."""
    kq, kk, kv, kd = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (2, 16, 4, 8))
    k, v = jax.random.normal(kk, (2, 16, 2, 8)), jax.random.normal(kv, (2, 16, 2, 8))
    d_out = jax.random.normal(kd, (2, 16, 4, 8))

    def loss(ops, q, k, v):
        out = ops.causal_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype))
        assert out.dtype == dtype
        return jnp.sum(out.astype(jnp.float32) * d_out)

    want = jax.value_and_grad(loss, argnums=(1, 2, 3))(reference, q, k, v)
    close(jax.value_and_grad(loss, argnums=(1, 2, 3))(kernels.get(fast), q, k, v), want, dtype)
    # causal: the first query attends only to the first key, so its output is v[:, 0] in every set
    for ops in (reference, kernels.get(fast)):
        out = ops.causal_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype))
        np.testing.assert_allclose(
            np.asarray(out[:, 0], np.float32), np.repeat(v[:, 0], 2, axis=1), atol=TOLERANCE[dtype] * 10
        )


@pytest.mark.parametrize("fast", FAST_SETS)
def test_cached_attention_equals_the_reference_on_its_own_cache_layout(fast):
    """Two rows, one left-padded (position -1), written into each set's cache and attended at positions 3..5."""
    kq, kk, kv = jax.random.split(jax.random.key(1), 3)
    q, k, v = (
        jax.random.normal(kq, (2, 3, 4, 8)),
        jax.random.normal(kk, (2, 3, 2, 8)),
        jax.random.normal(kv, (2, 3, 2, 8)),
    )
    positions = jnp.array([[-1, 0, 1], [3, 4, 5]], jnp.int32)
    outs = []
    for ops in (reference, kernels.get(fast)):
        cache = ops.init_cache(2, 8, 2, 8, jnp.float32)
        y, cache = ops.cached_attention(q, k, v, positions, cache, jnp.int32(2))
        assert cache["pos"][0, 2:5].tolist() == [-1, 0, 1]
        outs.append(y[1])  # row 0's padded query sees no key: its output is no one's to compare
    close(outs[1], outs[0], jnp.float32)


CFG = ModelConfig(
    family="llama",
    vocab_size=64,
    block_size=32,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    n_embd=32,
    tie_embeddings=False,
    remat="save_attention",
)


def with_kernels(cfg: ModelConfig, kernel_set: str, dtype: str) -> ModelConfig:
    return dataclasses.replace(cfg, kernels=kernel_set, compute_dtype=dtype)


@pytest.mark.parametrize("fast", FAST_SETS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_model_logits_and_gradients_equal_the_reference(fast, dtype, family):
    cfg = dataclasses.replace(CFG, family=family, tie_embeddings=family == "gpt2")
    params = nnx.state(random_model(with_kernels(cfg, "reference", dtype)), nnx.Param)
    tokens = jax.random.randint(jax.random.key(2), (2, 17), 0, cfg.vocab_size)
    results = []
    for kernel_set in ("reference", fast):
        gd = nnx.graphdef(abstract_model(with_kernels(cfg, kernel_set, dtype)))

        def loss(p, gd=gd):
            logits, _ = nnx.merge(gd, p)(tokens[:, :-1])
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

        (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        results.append((value, logits, grads))
    close(results[1], results[0], jnp.dtype(dtype).type)


def _losses(kernel_set: str, steps: int = 4) -> list[float]:
    cfg = Config(
        model=with_kernels(CFG, kernel_set, "float32"),
        optim=OptimConfig(lr=1e-2, warmup_steps=1),
        train=TrainConfig(steps=steps, batch_size=4),
    )
    mesh = sharding.make_mesh(cfg)
    trainer, _ = step.make_trainer(cfg, mesh)
    state = step.init_state(cfg, trainer)
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 33)).astype(np.int32)
    batch = sharding.global_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, mesh, 4)
    train_step = trainer.jit_train_step()
    losses = []
    for _ in range(steps):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses


@pytest.mark.parametrize("fast", FAST_SETS)
def test_training_losses_equal_the_reference_over_steps(fast):
    np.testing.assert_allclose(_losses(fast), _losses("reference"), rtol=1e-5)


@pytest.mark.parametrize("fast", FAST_SETS)
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_generations_equal_the_reference(fast, batch):
    params = nnx.state(random_model(with_kernels(CFG, "reference", "float32")), nnx.Param)
    prompts = [[2, 5, 9, 11][: 2 + i] for i in range(batch)]
    sampling = SamplingConfig(max_new_tokens=20, temperature=0.0)
    tokens = {}
    for kernel_set in ("reference", fast):
        c = with_kernels(CFG, kernel_set, "float32")
        gd = nnx.graphdef(abstract_model(c))
        tokens[kernel_set] = np.stack(list(generate_tokens(gd, params, c, prompts, sampling, stop_ids=())))
    np.testing.assert_array_equal(tokens[fast], tokens["reference"])


@pytest.mark.parametrize("kernel_set", list(kernels.SETS))
@pytest.mark.parametrize(
    "remat, kept", [("save_attention", {names.ATTENTION_OUT}), ("save_matmuls", {names.ATTENTION_OUT}), ("full", set())]
)
def test_remat_policies_keep_the_same_named_tensors_in_every_kernel_set(kernel_set, remat, kept):
    """'save_attention' means the attention's output is kept on every backend (a name only one set gave would
    silently turn the policy into full recomputation elsewhere)."""
    q = jax.random.normal(jax.random.key(0), (2, 16, 4, 8))
    ops = kernels.get(kernel_set)
    layer = jax.checkpoint(lambda q: jnp.sum(jnp.sin(ops.causal_attention(q, q, q))), policy=REMAT_POLICIES[remat])
    saved = {
        n
        for _, source in saved_residuals(layer, q)
        for n in (names.ATTENTION_OUT, names.ATTENTION_LSE)
        if f"named '{n}'" in source
    }
    assert kept <= saved and (remat != "full" or not saved)


class FakeDevice:
    def __init__(self, platform: str):
        self.platform = platform


@pytest.mark.parametrize(
    "platform, n, peaks, want",
    [
        ("cpu", 1, {"float32": 120e9, "bfloat16": 80e9}, ("xla_cpu", "float32")),  # AVX2: bf16 slower (Zen 3)
        ("cpu", 1, {"float32": 250e9, "bfloat16": 1100e9}, ("xla_cpu", "bfloat16")),  # AVX-512 BF16 (Zen 5)
        ("cpu", 1, {"float32": 250e9, "bfloat16": 280e9}, ("xla_cpu", "float32")),  # not enough faster to pay
        ("cpu", 8, {"float32": 250e9, "bfloat16": 1100e9}, ("reference", "bfloat16")),  # a sharded CPU mesh
        ("gpu", 1, None, ("reference", "bfloat16")),
        ("tpu", 4, None, ("reference", "bfloat16")),
    ],
)
def test_auto_resolves_from_the_devices_and_the_measured_peaks(monkeypatch, platform, n, peaks, want):
    monkeypatch.setattr(probe, "peaks", lambda: peaks)
    choice = kernels.choose(ModelConfig(), [FakeDevice(platform)] * n)
    assert (choice.kernels, choice.compute_dtype) == want
    assert want[0] in choice.why and want[1] in choice.why
    explicit = kernels.choose(ModelConfig(kernels="reference", compute_dtype="float32"), [FakeDevice(platform)] * n)
    assert (explicit.kernels, explicit.compute_dtype) == ("reference", "float32")


def test_an_unresolved_kernel_set_is_refused_by_name():
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        kernels.get("auto")
    with pytest.raises(ConfigError, match="model.kernels='fast'"):
        kernels.choose(ModelConfig(kernels="fast"), [FakeDevice("cpu")])


def test_the_probe_is_measured_once_and_kept_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(
        probe, "measure_peak", lambda dtype, n: calls.append(dtype) or {"float32": 2.0, "bfloat16": 3.0}[dtype]
    )
    probe.peaks.cache_clear()
    try:
        assert probe.peaks() == {"float32": 2.0, "bfloat16": 3.0}
        probe.peaks.cache_clear()
        assert probe.peaks() == {"float32": 2.0, "bfloat16": 3.0}  # read back from the file, not measured
        assert calls == ["float32", "bfloat16"]
        assert list(tmp_path.glob("jaxllm/*/probe.json"))
    finally:
        probe.peaks.cache_clear()
