"""SFT: the masked loss ignores masked tokens, batches are a pure function of the step, and the stage trains end
to end from a base run's checkpoint (through jaxllm.train.run)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm.config import ConfigError, ModelConfig, PosttrainConfig, replace, validate
from jaxllm.posttrain.common import start_config, step_indices
from jaxllm.posttrain.sft import mixed_rows, sft_stage
from jaxllm.train import checkpoint, command
from jaxllm.train.loop import run
from jaxllm.train.step import mean_loss as eager_mean_loss
from tests.conftest import random_model, tiny_config

mean_loss = jax.jit(eager_mean_loss, static_argnums=1)  # op by op, the tiny model takes seconds a call
TINY = ModelConfig(
    vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, kernels="reference", compute_dtype="float32"
)


def tiny_params():
    graphdef, params = nnx.split(random_model(TINY), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def test_masked_tokens_change_nothing():
    graphdef, params = tiny_params()
    rng = np.random.default_rng(0)
    inputs = rng.integers(8, 64, (2, 16)).astype(np.int32)
    targets = rng.integers(8, 64, (2, 16)).astype(np.int32)
    mask = np.zeros((2, 16), np.float32)
    mask[:, 5:9] = 1  # the assistant's tokens; after them: padding
    batch = {"inputs": inputs, "targets": targets, "loss_mask": mask}
    loss, _ = mean_loss(params, graphdef, batch)
    changed_targets = np.where(mask == 0, rng.integers(8, 64, (2, 16)), targets).astype(np.int32)
    changed_inputs = inputs.copy()
    changed_inputs[:, 9:] = rng.integers(8, 64, (2, 7))  # causal: later inputs cannot reach earlier positions
    for changed in ({"targets": changed_targets}, {"inputs": changed_inputs}):
        np.testing.assert_allclose(mean_loss(params, graphdef, batch | changed)[0], loss, rtol=1e-6)
    changed_kept = targets.copy()
    changed_kept[0, 6] = (targets[0, 6] + 1) % 64
    assert abs(float(mean_loss(params, graphdef, batch | {"targets": changed_kept})[0]) - float(loss)) > 1e-6
    # the masked mean is the mean over kept tokens only
    nats = -jax.nn.log_softmax(nnx.merge(graphdef, params)(jnp.asarray(inputs))[0])
    per_token = np.take_along_axis(np.asarray(nats), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, per_token[:, 5:9].mean(), rtol=1e-5)


def test_mixed_batches_weigh_conversations_and_text_by_text_mix():
    graphdef, params = tiny_params()
    rng = np.random.default_rng(1)
    chat = {k: rng.integers(8, 64, (3, 16)).astype(np.int32) for k in ("inputs", "targets")}
    chat["loss_mask"] = np.zeros((3, 16), np.float32)
    chat["loss_mask"][:, 4:7] = 1  # 9 assistant tokens
    text = {k: rng.integers(8, 64, (1, 16)).astype(np.int32) for k in ("inputs", "targets")}
    mixed = mixed_rows(chat, text, 0.25)
    np.testing.assert_allclose(mixed["loss_mask"].sum(), 1.0, rtol=1e-6)
    nats = -jax.nn.log_softmax(nnx.merge(graphdef, params)(jnp.asarray(mixed["inputs"]))[0])
    per_token = np.take_along_axis(np.asarray(nats), mixed["targets"][..., None], -1)[..., 0]
    expected = 0.75 * per_token[:3, 4:7].mean() + 0.25 * per_token[3].mean()
    np.testing.assert_allclose(mean_loss(params, graphdef, mixed)[0], expected, rtol=1e-5)


@pytest.mark.slow
def test_sft_with_pretraining_text_mixed_in(tiny_lineage, tmp_path):
    cfg = tiny_lineage["sft_cfg"]
    mixed = replace(cfg, posttrain=replace(cfg.posttrain, text_mix=0.5), train=replace(cfg.train, steps=3))
    result = run(mixed, tmp_path / "mixed", progress=False, make_stage=sft_stage)
    assert result["step"] == 3 and np.isfinite(result["val_loss"])
    with pytest.raises(ConfigError, match="mixes pretraining text into SFT only"):
        validate(replace(tiny_lineage["dpo_cfg"], posttrain=replace(tiny_lineage["dpo_cfg"].posttrain, text_mix=0.2)))


def test_step_indices_are_epochs_and_pure():
    seen = np.concatenate([step_indices(10, 4, 0, s) for s in range(5)])  # 20 draws = two epochs of 10
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    np.testing.assert_array_equal(step_indices(10, 4, 0, 3), step_indices(10, 4, 0, 3))
    assert not np.array_equal(step_indices(10, 4, 1, 0), step_indices(10, 4, 0, 0))


def test_stage_must_match_the_command(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="run it with python -m jaxllm.sft"):
        command.main(["--experiment=base_sft", f"--run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="run it with python -m jaxllm.train"):
        command.main(["--experiment=base", f"--run_dir={tmp_path / 'run'}"], "sft", lambda cfg: (cfg, None))
    cfg = tiny_config(tiny_corpus, tmp_path)
    sft = replace(
        cfg,
        train=replace(cfg.train, init_from=str(tmp_path / "none")),
        posttrain=PosttrainConfig(stage="sft", seq_len=16),
    )
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        start_config(sft)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sft_end_to_end(tiny_lineage):
    sft, root = tiny_lineage["sft"], tiny_lineage["root"]
    assert sft["step"] == 6 and np.isfinite(sft["val_loss"]) and sft["sample"].startswith("user: What is")
    mngr = checkpoint.manager(root / "sft", read_only=True)
    meta = checkpoint.read_meta(mngr)
    assert meta["config"]["posttrain"]["stage"] == "sft" and meta["config"]["train"]["init_from"] == str(root / "base")
    base = checkpoint.read_meta(checkpoint.manager(root / "base", read_only=True))
    assert meta["config"]["model"] == base["config"]["model"]
