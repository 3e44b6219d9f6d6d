"""Accounting, planner methods, sizing and fitting in jaxllm.scaling and jaxllm.scaling.fit."""

import json
import math

import numpy as np
import pytest

from jaxllm.config import Config, ModelConfig, TrainConfig
from jaxllm.model.accounting import flops_per_token, param_count
from jaxllm.model.transformer import count_params
from jaxllm.scaling import sweep as scaling_sweep
from jaxllm.scaling.budget import find_law, setup_key
from jaxllm.scaling.fit import bootstrap_loss_law, fit_loss_law, isoflop_minimum, power_law
from jaxllm.scaling.laws import BESIROGLU_2024, HOFFMANN_2022, LossLaw, rule_of_20, size_model, smallest_model
from jaxllm.scaling.sweep import sweep

SHAPES = [
    ModelConfig(family="gpt2", n_layer=2, n_head=4, n_embd=64, vocab_size=512, block_size=32),
    ModelConfig(
        family="gpt2",
        n_layer=3,
        n_head=4,
        n_kv_head=2,
        n_embd=96,
        vocab_size=300,
        block_size=16,
        tie_embeddings=False,
        mlp_hidden=100,
    ),
    ModelConfig(family="llama", n_layer=2, n_head=4, n_embd=64, vocab_size=512),
    ModelConfig(family="llama", n_layer=3, n_head=6, n_kv_head=2, n_embd=96, vocab_size=320, tie_embeddings=False),
]


@pytest.mark.parametrize("cfg", SHAPES, ids=lambda c: f"{c.family}-kv{c.kv_heads}-tied{c.tie_embeddings}")
def test_param_count_equals_built_model(cfg):

    assert param_count(cfg).total == count_params(cfg)


def test_param_count_split_by_hand():
    # gpt2, E=64, T=32, V=512, 2 layers, F=256, tied: embedding = V·E + T·E
    cfg = SHAPES[0]
    per_layer = 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64)
    assert param_count(cfg).embedding == 512 * 64 + 32 * 64
    assert param_count(cfg).non_embedding == 2 * per_layer + 2 * 64


def test_flops_per_token_is_6n_plus_attention():
    cfg = SHAPES[3]  # llama, untied: the LM head is a matmul counted once, lookups are free
    n_matmul = param_count(cfg).non_embedding + 320 * 96
    assert flops_per_token(cfg) == 6 * n_matmul + 12 * 3 * cfg.block_size * 96


# Hoffmann et al. 2022, Table 3: (parameters, FLOPs, tokens)
TABLE_3 = [
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


@pytest.mark.parametrize("n_params, flops, n_tokens", TABLE_3)
def test_rule_of_20_reproduces_table_3(n_params, flops, n_tokens):
    plan = rule_of_20(flops)
    assert plan.n_params == pytest.approx(n_params, rel=0.1)
    assert plan.n_tokens == pytest.approx(n_tokens, rel=0.1)


@pytest.mark.parametrize("law", [HOFFMANN_2022, BESIROGLU_2024])
@pytest.mark.parametrize("flops", [1e18, 1e21, 1e24])
def test_parametric_optimum_matches_brute_force(law, flops):
    n_grid = np.geomspace(1e6, 1e14, 400_001)
    brute = n_grid[np.argmin(law.loss(n_grid, flops / 6 / n_grid))]
    n_params, n_tokens = law.optimum(flops)
    assert n_params == pytest.approx(brute, rel=1e-3)
    assert 6 * n_params * n_tokens == pytest.approx(flops)


def test_epoch_refit_keeps_about_20_tokens_per_parameter():
    n_params, n_tokens = BESIROGLU_2024.optimum(1e24)
    assert 15 < n_tokens / n_params < 30


@pytest.mark.parametrize("cfg", [SHAPES[0], SHAPES[3]], ids=["gpt2", "llama-gqa"])
@pytest.mark.parametrize("n_target", [3e5, 3e6, 1e8, 3e9])
def test_size_model_is_near_target_and_valid(cfg, n_target):
    model = size_model(cfg, n_target)
    assert model.head_dim == cfg.head_dim and model.n_head % model.kv_heads == 0
    assert model.n_head // model.kv_heads == cfg.n_head // cfg.kv_heads
    if n_target > 10 * param_count(smallest_model(cfg)).total:  # small shapes are too coarse to match closely
        assert abs(math.log(param_count(model).total / n_target)) < 0.1


def _synthetic_sweep(law: LossLaw, budgets, sizes: int = 7, span: float = 4.0):
    """(budget, N, D, loss) for IsoFLOP grids around each budget's optimum, losses exactly on the law."""
    rows = []
    for flops in budgets:
        for n in law.optimum(flops)[0] * np.geomspace(1 / span, span, sizes):
            rows.append((flops, n, flops / 6 / n, law.loss(n, flops / 6 / n)))
    return np.array(rows)


def test_isoflop_fits_recover_the_optimum_exponents():
    law = LossLaw(E=1.8, A=400.0, B=2000.0, alpha=0.35, beta=0.37)
    budgets = [1e17, 1e18, 1e19, 1e20]
    rows = _synthetic_sweep(law, budgets)
    n_opt, d_opt = [], []
    for flops in budgets:
        at = rows[rows[:, 0] == flops]
        n_opt.append(math.exp(isoflop_minimum(np.log(at[:, 1]), at[:, 3])[0]))
        d_opt.append(math.exp(isoflop_minimum(np.log(at[:, 2]), at[:, 3])[0]))
    a, _ = power_law(np.array(budgets), np.array(n_opt))
    b, _ = power_law(np.array(budgets), np.array(d_opt))
    assert a == pytest.approx(law.beta / (law.alpha + law.beta), abs=0.01)
    assert b == pytest.approx(law.alpha / (law.alpha + law.beta), abs=0.01)


def test_isoflop_minimum_refuses_a_concave_profile():
    with pytest.raises(ValueError, match="curve upwards"):
        isoflop_minimum(np.log([1e6, 1e7, 1e8]), np.array([3.0, 2.0, 3.5]) * -1)


def test_loss_law_fit_recovers_known_parameters_through_noise():
    law = LossLaw(E=1.8, A=400.0, B=2000.0, alpha=0.35, beta=0.37)
    rows = _synthetic_sweep(law, [1e17, 1e18, 1e19, 1e20, 1e21], span=8.0)
    noisy = rows[:, 3] * np.exp(np.random.default_rng(0).normal(0, 0.003, len(rows)))
    fit = fit_loss_law(rows[:, 1], rows[:, 2], noisy)
    assert fit.alpha == pytest.approx(law.alpha, abs=0.02)
    assert fit.beta == pytest.approx(law.beta, abs=0.02)
    assert fit.E == pytest.approx(law.E, abs=0.05)


def test_loss_law_bootstrap_intervals_hold_the_truth():
    law = LossLaw(E=1.8, A=400.0, B=2000.0, alpha=0.35, beta=0.37)
    rows = _synthetic_sweep(law, [1e17, 1e18, 1e19, 1e20], span=8.0)
    noisy = rows[:, 3] * np.exp(np.random.default_rng(1).normal(0, 0.005, len(rows)))
    fit = fit_loss_law(rows[:, 1], rows[:, 2], noisy)
    ci = bootstrap_loss_law(rows[:, 1], rows[:, 2], noisy, fit, resamples=40)
    assert ci["resamples"] >= 20
    for key, true in (("alpha", law.alpha), ("beta", law.beta), ("params_exponent", 0.37 / 0.72)):
        low, high = ci[key]
        assert low < true < high and high - low < 0.3, (key, low, high)


def test_sweep_fits_plots_and_reuses_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling_sweep, "BOOTSTRAP_RESAMPLES", 20)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    calls = []

    def fake_train(cfg, run_dir, progress):  # final loss exactly on the Epoch AI law
        calls.append(cfg)
        tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.block_size
        return {
            "val_loss": BESIROGLU_2024.loss(param_count(cfg.model).total, tokens),
            "val_bpb": 1.0,
            "tokens_per_s": 1e4,
        }

    cfg = Config(
        model=ModelConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64),
        train=TrainConfig(batch_size=4),
    )
    assert sweep(cfg, [2e12, 2e13, 2e14], 5, 4.0, tmp_path, fake_train, part=(1, 2)) is None  # half the grid
    half = len(calls)
    summary = sweep(cfg, [2e12, 2e13, 2e14], 5, 4.0, tmp_path, fake_train, part=(2, 2))
    assert len(calls) == len(summary["runs"]) >= 9 and 0 < half < len(calls)
    assert all(run.train.eval_every == run.train.steps for run in calls)
    assert {"isoflop.png", "optimal.png", "scaling.json"} <= {p.name for p in tmp_path.iterdir()}
    fits = summary["fits"]
    assert all(p["inside_grid"] for p in fits["isoflop"])
    assert fits["params_law"]["exponent"] == pytest.approx(0.51, abs=0.1)  # Epoch AI: beta / (alpha + beta)
    assert fits["loss_law"]["alpha"] == pytest.approx(BESIROGLU_2024.alpha, abs=0.01)
    low, high = fits["loss_law"]["interval_95"]["alpha"]
    assert low <= fits["loss_law"]["alpha"] <= high
    law = json.loads((tmp_path / "law.json").read_text())
    assert law["setup_key"] == setup_key(cfg) == summary["setup_key"] and law["loss_law"] == fits["loss_law"]
    assert find_law(cfg).law.alpha == fits["loss_law"]["alpha"]  # the planner finds it in this machine's cache

    calls.clear()
    assert sweep(cfg, [2e12, 2e13, 2e14], 5, 4.0, tmp_path, fake_train)["runs"] == summary["runs"]
    assert calls == []
