"""DPO: the loss against a hand computation, ln 2 and zero margin when the policy is the reference, and the stage
end to end from an SFT run (which is also the frozen reference)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.config import ConfigError, replace, validate
from jaxllm.posttrain import tasks
from jaxllm.posttrain.dpo import dpo_loss, make_loss_fn, masked_logprobs, own_mistakes
from jaxllm.train.checkpoint import load_run
from tests.test_sft import tiny_params


def test_dpo_loss_by_hand():
    policy_chosen, policy_rejected = jnp.array([-10.0, -4.0]), jnp.array([-12.0, -3.0])
    ref_chosen, ref_rejected = jnp.array([-11.0, -5.0]), jnp.array([-11.0, -5.0])
    beta = 0.5
    loss, m = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    # pair 1: chosen reward 0.5 * 1 = 0.5, rejected 0.5 * -1 = -0.5, margin 1.0
    # pair 2: chosen reward 0.5 * 1 = 0.5, rejected 0.5 * 2 = 1.0, margin -0.5
    expected = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(0.5)))) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(
        [m["chosen_reward"], m["rejected_reward"], m["margin"], m["reward_acc"]], [0.5, 0.25, 0.25, 0.5], rtol=1e-6
    )


def test_policy_equal_to_reference_gives_ln2():
    graphdef, params = tiny_params()
    rng = np.random.default_rng(0)
    batch = {}
    for side in ("chosen", "rejected"):
        inputs = rng.integers(8, 64, (3, 16)).astype(np.int32)
        targets = rng.integers(8, 64, (3, 16)).astype(np.int32)
        mask = np.zeros((3, 16), np.float32)
        mask[:, 6:11] = 1
        batch |= {
            f"{side}_inputs": inputs,
            f"{side}_targets": targets,
            f"{side}_loss_mask": mask,
            f"{side}_ref": masked_logprobs(params, graphdef, inputs, targets, mask),
        }
    loss, m = jax.jit(make_loss_fn(0.1), static_argnums=1)(params, graphdef, batch)
    np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)
    np.testing.assert_allclose([m["margin"], m["chosen_reward"], m["rejected_reward"]], 0.0, atol=1e-6)
    # RPO: plus the weight times the chosen replies' mean negative log-likelihood over their 15 reply tokens
    with_nll, m = jax.jit(make_loss_fn(0.1, 0.5), static_argnums=1)(params, graphdef, batch)
    nll = -float(np.sum(batch["chosen_ref"])) / 15
    np.testing.assert_allclose([float(with_nll), float(m["chosen_nll"])], [math.log(2) + 0.5 * nll, nll], rtol=1e-5)


@pytest.mark.slow
def test_dpo_end_to_end(tiny_lineage):
    dpo, root = tiny_lineage["dpo"], tiny_lineage["root"]
    assert dpo["step"] == 6 and np.isfinite(dpo["val_loss"])
    records = [json.loads(line) for line in (root / "dpo" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert {"reward_acc", "chosen_reward", "rejected_reward", "margin"} <= logged[0].keys()
    assert logged[0]["step"] == 1 and abs(logged[0]["loss"] - math.log(2)) < 1e-4  # step 1: policy = reference
    assert abs(logged[0]["margin"]) < 1e-4


@pytest.mark.slow
def test_own_mistakes_pair_the_answer_with_the_models_wrong_greedy_reply(tiny_lineage):
    run = load_run(tiny_lineage["root"] / "sft")
    problems = tasks.load("tasks:count", 0.15)[0][:6]
    pairs = own_mistakes(run.cfg, run.graphdef, run.params, run.tokenizer, problems)
    assert pairs  # a 6-step model counts badly
    by_prompt = {p.prompt: p for p in problems}
    for pair in pairs:
        problem = by_prompt[pair["prompt"]]
        assert pair["chosen"] == problem.answer and not tasks.is_correct(problem, pair["rejected"])


@pytest.mark.slow
def test_own_mistakes_need_dpo_and_a_task_source(tiny_lineage):
    dpo = tiny_lineage["dpo_cfg"]
    with pytest.raises(ConfigError, match="a 'tasks' source in posttrain.preferences"):
        validate(replace(dpo, posttrain=replace(dpo.posttrain, own_mistakes=64)))  # its pairs are a JSONL file
    sft = tiny_lineage["sft_cfg"]
    with pytest.raises(ConfigError, match="use it with python -m jaxllm.dpo"):
        validate(replace(sft, posttrain=replace(sft.posttrain, own_mistakes=64, preferences=("tasks",))))
    validate(replace(dpo, posttrain=replace(dpo.posttrain, own_mistakes=64, preferences=("tasks:count",))))
