"""The optimizer: schedule, weight-decay mask, and Muon's split between orthogonalised block matrices and AdamW."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxllm.config import ModelConfig, OptimConfig
from jaxllm.model.transformer import abstract_model
from jaxllm.train.optim import decay_mask, initial_schedule, learning_rate, make_optimizer, reanchor

CFG = ModelConfig(
    family="llama", vocab_size=64, block_size=8, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=False
)


def _params_and_grads():
    shapes = nnx.to_pure_dict(nnx.state(abstract_model(CFG), nnx.Param))
    keys = iter(jax.random.split(jax.random.key(0), 2 * len(jax.tree.leaves(shapes))))
    params = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape), shapes)
    grads = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape), shapes)
    return params, grads


def _rates(cfg: OptimConfig, schedule: dict, steps) -> np.ndarray:
    return np.array([float(learning_rate(cfg, schedule, s)) for s in steps])


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = OptimConfig(lr=1e-2, warmup_steps=10, min_lr_ratio=0.1)
    np.testing.assert_allclose(
        _rates(cfg, initial_schedule(cfg, 110), (0, 5, 10, 60, 110, 200)),
        [0.0, 5e-3, 1e-2, 1e-3 + 9e-3 * 0.5, 1e-3, 1e-3],
        rtol=1e-5,
    )


@pytest.mark.parametrize("warmup, steps", [(10, 110), (0, 37), (50, 20)])
def test_schedule_left_alone_is_optax_warmup_cosine(warmup, steps):
    cfg = OptimConfig(lr=3e-3, warmup_steps=warmup, min_lr_ratio=0.1)
    capped = min(warmup, steps - 1)
    reference = optax.warmup_cosine_decay_schedule(0.0, 3e-3, capped, max(steps, capped + 1), 3e-4)
    np.testing.assert_allclose(
        _rates(cfg, initial_schedule(cfg, steps), range(steps + 3)),
        [float(reference(s)) for s in range(steps + 3)],
        rtol=1e-5,
        atol=1e-9,
    )


def test_moving_the_end_keeps_the_rate_continuous_and_ends_at_the_floor():
    """Moved at step 40 of 110 (warmup 10) to end at 70: the cosine's progress at 40 is 0.3, and from there it runs
    linearly to 1 at step 70; moved again during warmup, the warmup is kept."""
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    moved = reanchor(initial_schedule(cfg, 110), 40, 70)
    cosine = lambda p: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))  # noqa: E731
    progress = [0.3 + 0.7 * (s - 40) / 30 for s in (40, 55, 70)]
    np.testing.assert_allclose(_rates(cfg, moved, (40, 55, 70, 90)), [*map(cosine, progress), 0.1], rtol=1e-5)
    early = reanchor(initial_schedule(cfg, 110), 4, 60)
    np.testing.assert_allclose(_rates(cfg, early, (4, 10, 35, 60)), [0.4, 1.0, cosine(0.5), 0.1], rtol=1e-5)


def test_weight_decay_only_on_block_matrices_and_head():
    mask = decay_mask(_params_and_grads()[0])
    assert mask["blocks"]["attn"]["q"] and mask["blocks"]["mlp"]["down"] and mask["head"]
    assert not mask["embed"] and not mask["blocks"]["norm1"]["scale"] and not mask["norm"]["scale"]


@pytest.mark.parametrize("name, n_in", [("q", 1), ("k", 1), ("o", 2), ("gate", 1), ("down", 1)])
def test_muon_orthogonalises_each_layer_matrix(name, n_in):
    """The first Muon update of a block matrix is its gradient's orthogonal factor (Newton-Schulz brings every
    singular value near 1) times the learning rate and Muon's shape factor sqrt(max(1, out/in)), computed per layer
    on the (input axes, output axes) matrix that model.dense multiplies."""
    params, grads = _params_and_grads()
    lr, tx_lr = 0.05, 1e-3
    tx = make_optimizer(
        OptimConfig(
            name="muon", muon_lr=lr, lr=1e-3, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, grad_clip=0.0
        ),
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    updates = jax.tree.map(lambda u: tx_lr * u, updates)  # the train step's scaling, at the schedule's peak
    group = "attn" if name in ("q", "k", "o") else "mlp"
    update = np.asarray(updates["blocks"][group][name])
    gradient = np.asarray(grads["blocks"][group][name])
    for layer, g in zip(update, gradient):
        n = int(np.prod(layer.shape[:n_in]))
        matrix, g = layer.reshape(n, -1) / (lr * np.sqrt(max(1.0, layer.size / n / n))), g.reshape(n, -1)
        u, _, vt = np.linalg.svd(g, full_matrices=False)
        # Newton-Schulz is an odd polynomial of the matrix: same singular vectors, singular values pushed to ~1
        core = -u.T @ matrix @ vt.T  # an update descends
        np.testing.assert_allclose(core, np.diag(np.diag(core)), atol=2e-5)
        assert 0.4 < np.diag(core).min() and np.diag(core).max() < 1.3, (name, np.diag(core))


def test_muon_leaves_embeddings_norms_and_head_to_adam():
    """AdamW's first step moves every element by the same amount against its gradient's sign."""
    params, grads = _params_and_grads()
    tx_lr = 1e-2
    tx = make_optimizer(
        OptimConfig(name="muon", lr=tx_lr, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, grad_clip=0.0),
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    updates = jax.tree.map(lambda u: tx_lr * u, updates)  # the train step's scaling, at the schedule's peak
    for leaf in (("embed",), ("head",), ("norm", "scale"), ("blocks", "norm1", "scale")):
        u, g = updates, grads
        for key in leaf:
            u, g = u[key], g[key]
        step = np.asarray(-u * jnp.sign(g))
        chex.assert_trees_all_close(step, np.full_like(step, step.flat[0]), rtol=1e-3)  # eps: tiny gradients
        assert 5e-3 < step.flat[0] < 3e-2, leaf


def test_adamw_and_muon_states_differ_in_what_they_keep():
    params, _ = _params_and_grads()
    adam = make_optimizer(OptimConfig()).init(params)
    muon = make_optimizer(OptimConfig(name="muon")).init(params)
    n = lambda state: sum(x.size for x in jax.tree.leaves(state))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_matrices = sum(
        x.size
        for k, x in jax.tree_util.tree_leaves_with_path(params["blocks"])
        if k[-1].key in ("q", "k", "v", "o", "up", "gate", "down")
    )
    assert n(adam) == 2 * n_params + 1  # two moments per parameter and Adam's step count (the schedule is not here)
    # one momentum per matrix element, two moments for the rest; two step counts, three Newton-Schulz coefficients
    assert n(muon) == n_matrices + 2 * (n_params - n_matrices) + 2 + 3
