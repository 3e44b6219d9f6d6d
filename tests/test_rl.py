"""GRPO: the objective against a direct computation on a toy policy, group advantages, reply rows, and the stage end
to end with exact resume."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.config import ConfigError, PosttrainConfig, replace, validate
from jaxllm.posttrain.common import start_config
from jaxllm.posttrain.rl import GROUP_STD_EPS, group_advantages, grpo_loss, reply_rows, rl_stage
from jaxllm.train.loop import run
from tests.posttrain_fixtures import arithmetic, write_jsonl


def test_group_advantages_by_hand():
    rewards = np.array([1, 0, 0, 0, 1, 1, 1, 1], np.float32)  # two groups of four
    std = np.sqrt(3 / 16)  # population std of (1, 0, 0, 0): mean 1/4
    expected = [0.75 / (std + GROUP_STD_EPS)] + [-0.25 / (std + GROUP_STD_EPS)] * 3 + [0.0] * 4
    np.testing.assert_allclose(group_advantages(rewards, 4), expected, rtol=1e-6)


def _toy(seed: int = 0, b: int = 4, t: int = 5, v: int = 6):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, t, v))
    tokens = rng.integers(0, v, size=(b, t))
    mask = (rng.random((b, t)) < 0.7).astype(np.float64)
    mask[:, 0] = 1  # every reply has a token
    return logits, tokens, mask, rng.normal(size=b), rng


def _logsoftmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_grpo_loss_equals_a_direct_computation():
    """Every term written out per reply and token, in numpy loops: the clip, the min and the k3 KL."""
    logits, tokens, mask, adv, rng = _toy()
    logp = np.take_along_axis(_logsoftmax(logits), tokens[..., None], -1)[..., 0]
    old = logp + rng.normal(scale=0.3, size=logp.shape)  # ratios on both sides of the clip
    ref = logp + rng.normal(scale=0.5, size=logp.shape)
    eps, beta = 0.2, 0.1
    per_reply, kls = [], []
    for i in range(len(adv)):
        terms, kl_terms = [], []
        for j in range(logp.shape[1]):
            if not mask[i, j]:
                continue
            ratio = np.exp(logp[i, j] - old[i, j])
            surrogate = min(ratio * adv[i], min(max(ratio, 1 - eps), 1 + eps) * adv[i])
            kl = np.exp(ref[i, j] - logp[i, j]) - (ref[i, j] - logp[i, j]) - 1
            terms.append(surrogate - beta * kl)
            kl_terms.append(kl)
        per_reply.append(np.mean(terms))
        kls.append(np.mean(kl_terms))
    loss, metrics = grpo_loss(*map(jnp.asarray, (logp, old, ref, adv, mask)), eps, beta)
    np.testing.assert_allclose(float(loss), -np.mean(per_reply), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl"]), np.mean(kls), rtol=1e-5)


def test_grpo_gradient_on_policy_is_the_advantage_weighted_score():
    """At the sampling policy (ratio 1) without KL the gradient with respect to a toy policy's logits is
    -mean_i A_i / |o_i| sum_t (onehot(token) - softmax(logits)): REINFORCE with group baselines."""
    logits, tokens, mask, adv, _ = _toy(1)

    def loss(x):
        logp = jnp.take_along_axis(jax.nn.log_softmax(x), tokens[..., None], -1)[..., 0]
        return grpo_loss(logp, jax.lax.stop_gradient(logp), logp, jnp.asarray(adv), jnp.asarray(mask), 0.2, 0.0)[0]

    grad = jax.grad(loss)(jnp.asarray(logits))
    probs = np.exp(_logsoftmax(logits))
    onehot = np.eye(logits.shape[-1])[tokens]
    weight = (adv / mask.sum(-1))[:, None, None] * mask[..., None]
    np.testing.assert_allclose(np.asarray(grad), -weight * (onehot - probs) / len(adv), rtol=1e-5, atol=1e-7)


def test_reply_rows_mask_the_reply_and_its_stop_token():
    rows = reply_rows([[2, 5, 40, 41, 6], [2, 5, 42, 6]], [[50, 51, 7], [52]], seq_len=8, pad=0)
    np.testing.assert_array_equal(rows["inputs"][0], [2, 5, 40, 41, 6, 50, 51, 7])
    np.testing.assert_array_equal(rows["targets"][0], [5, 40, 41, 6, 50, 51, 7, 0])
    np.testing.assert_array_equal(rows["loss_mask"][0], [0, 0, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(rows["loss_mask"][1], [0, 0, 0, 1, 0, 0, 0, 0])


@pytest.fixture(scope="module")
def rl_config(tiny_lineage):
    root = tiny_lineage["root"]
    problems = write_jsonl(
        root / "sums.jsonl", [{"prompt": q, "answer": a.rstrip("."), "checker": "numeric"} for q, a, _ in arithmetic()]
    )
    sft = tiny_lineage["sft_cfg"]
    cfg = replace(
        sft,
        name="rl",
        train=replace(
            sft.train, init_from=str(root / "sft"), steps=4, batch_size=8, log_every=1, eval_every=2, checkpoint_every=2
        ),
        posttrain=PosttrainConfig(
            stage="rl", prompts=(f"tasks:{problems}",), val_fraction=0.2, seq_len=32, group_size=4
        ),
    )
    return start_config(cfg)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rl_end_to_end_and_exact_resume(rl_config, tmp_path):
    result = run(rl_config, tmp_path / "rl", progress=False, make_stage=rl_stage)
    assert result["step"] == 4
    records = _records(tmp_path / "rl")
    train = [r for r in records if "reward" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(0 <= r["reward"] <= 1 and r["kl"] >= 0 for r in train)
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step's policy is the reference
    evals = [r for r in records if "pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and all(0 <= r["pass@1"] <= 1 for r in evals)

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "rl", resumed)
    for step in (4,):
        shutil.rmtree(resumed / "checkpoints" / str(step))
    (resumed / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records if r.get("step", 0) <= 2 and "final" not in r)
    )
    run(rl_config, resumed, progress=False, make_stage=rl_stage)
    again = [r for r in _records(resumed) if "reward" in r]
    assert [(r["step"], r["loss"], r["reward"]) for r in again] == [(r["step"], r["loss"], r["reward"]) for r in train]


def test_rl_config_is_refused_with_its_fix(rl_config):
    with pytest.raises(ConfigError, match="divide train.batch_size"):
        validate(replace(rl_config, posttrain=replace(rl_config.posttrain, group_size=3)))
    with pytest.raises(ConfigError, match="verifiable tasks"):
        validate(replace(rl_config, posttrain=replace(rl_config.posttrain, prompts=("stdlib",))))
    with pytest.raises(ConfigError, match="divide train.checkpoint_every"):
        validate(replace(rl_config, posttrain=replace(rl_config.posttrain, updates_per_sample=3)))
