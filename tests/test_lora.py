"""LoRA: the merge against numpy, step 0 equal to the base, steps that train the adapters only, sharded steps equal
to one device's, and end to end from a base run: exact resume, readers of the run (restore_latest_params, DPO) get
the merged model, and `hf export` gives transformers jaxllm's logits.

The sharded half runs as a worker with 8 fake CPU devices (`python tests/test_lora.py sharded`)."""

import contextlib
import io
import json
import math
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm import hf as hf_command
from jaxllm import sharding
from jaxllm.config import (
    LORA_TARGETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PosttrainConfig,
    TrainConfig,
    replace,
    validate,
)
from jaxllm.model.transformer import PROJECTIONS
from jaxllm.posttrain.common import start_config
from jaxllm.posttrain.dpo import dpo_stage
from jaxllm.posttrain.rl import rl_stage
from jaxllm.posttrain.sft import sft_stage
from jaxllm.train import checkpoint, lora
from jaxllm.train import step as step_lib
from jaxllm.train.loop import run
from tests.conftest import random_model
from tests.multidevice import run_worker
from tests.posttrain_fixtures import arithmetic, write_jsonl

LLAMA = ModelConfig(
    family="llama", vocab_size=64, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, tie_embeddings=False
)
ALL = ("q", "k", "v", "o", "up", "gate", "down")  # every projection: 'o' has two input axes, q/k/v two output axes


def llama_params() -> tuple[nnx.GraphDef, dict]:
    graphdef, params = nnx.split(random_model(replace(LLAMA, kernels="reference", compute_dtype="float32")), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def random_adapters(params: dict, rank: int) -> dict:
    """Adapters with B random too (fresh ones have B = 0, which would hide a wrong product)."""
    shapes = lora.adapter_shapes(params, ALL, rank)
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, s.shape) for k, s in zip(keys, leaves)])


def test_merge_equals_numpy():
    _, params = llama_params()
    adapters = random_adapters(params, rank=3)
    merged = jax.jit(lora.merge)(params, adapters, 0.5)
    for name in ALL:
        module, n_in = PROJECTIONS[name]
        w = np.asarray(params["blocks"][module][name], np.float64)
        a = np.asarray(adapters["blocks"][module][name]["lora_a"], np.float64)
        b = np.asarray(adapters["blocks"][module][name]["lora_b"], np.float64)
        layers, r = w.shape[0], a.shape[-1]
        # per layer: (inputs flattened, r) @ (r, outputs flattened), back to the kernel's shape
        product = np.stack([a[i].reshape(-1, r) @ b[i].reshape(r, -1) for i in range(layers)]).reshape(w.shape)
        np.testing.assert_allclose(merged["blocks"][module][name], w + 0.5 * product, rtol=1e-6, atol=1e-6)
    for untouched in (lambda t: t["embed"], lambda t: t["head"], lambda t: t["norm"], lambda t: t["blocks"]["norm1"]):
        jax.tree.map(np.testing.assert_array_equal, untouched(merged), untouched(params))


def test_fresh_adapters_leave_the_model_exactly_as_it_was():
    graphdef, params = llama_params()
    adapters = lora.init_adapters(jax.random.key(0), params, ALL, 4)
    assert not any(p["lora_b"].any() for module in adapters["blocks"].values() for p in module.values())
    merged = jax.jit(lora.merge)(params, adapters, 16 / 4)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)), jnp.int32)
    logits = jax.jit(lambda p: nnx.merge(graphdef, p)(tokens)[0])
    np.testing.assert_array_equal(logits(merged), logits(params))
    a = adapters["blocks"]["attn"]["o"]["lora_a"]  # (L, H, Dh, r): fan-in H * Dh = 16
    assert a.shape == (2, 4, 4, 4) and 0.15 < float(jnp.std(a)) < 0.35  # 1/sqrt(16) = 0.25


def lora_config(rank: int = 4) -> Config:
    model = replace(LLAMA, kernels="reference", compute_dtype="float32")
    return Config(
        model=model,
        optim=OptimConfig(warmup_steps=0),
        posttrain=PosttrainConfig(stage="sft", seq_len=16, lora_rank=rank, lora_targets=("q", "o", "gate")),
    )


def test_steps_train_the_adapters_and_leave_the_base_bit_identical():
    cfg = lora_config()
    graphdef, base = llama_params()
    base_copy = jax.tree.map(np.array, base)
    mesh = sharding.make_mesh(cfg)
    trainer, abstract_state = step_lib.make_trainer(cfg, mesh)
    o = abstract_state["params"]["blocks"]["attn"]["o"]  # the kernel is (L, H, Dh, E) = (2, 4, 4, 16)
    assert (o["lora_a"].shape, o["lora_b"].shape) == ((2, 4, 4, 4), (2, 4, 16))
    with jax.set_mesh(mesh):
        state = step_lib.init_state(cfg, trainer, jax.device_put(base, step_lib.model_layout(trainer.state_shardings)))
        train_step = trainer.jit_train_step()
        rng = np.random.default_rng(0)
        for _ in range(3):
            batch = {k: jnp.asarray(rng.integers(0, 64, (4, 16)), jnp.int32) for k in ("inputs", "targets")}
            state, metrics = train_step(state, batch)
        merged = trainer.model_params(state)
    jax.tree.map(np.testing.assert_array_equal, state["frozen"], base_copy)  # bit-identical after 3 steps
    moments = [
        (tuple(getattr(k, "key", None) for k in path), leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
        if leaf.ndim
    ]
    adapter_shapes = sorted(x.shape for x in jax.tree.leaves(state["params"]))
    assert sorted(shape for _, shape in moments) == sorted(adapter_shapes * 2)  # Adam's mu and nu, adapters only
    assert all(path[-1] in lora.FACTORS for path, _ in moments)
    assert all(float(jnp.abs(p["lora_b"]).max()) > 0 for m in state["params"]["blocks"].values() for p in m.values())
    for module, name in (("attn", "q"), ("attn", "o"), ("mlp", "gate")):
        assert not np.array_equal(merged["blocks"][module][name], base_copy["blocks"][module][name])
    for module, name in (("attn", "k"), ("attn", "v"), ("mlp", "up"), ("mlp", "down")):
        np.testing.assert_array_equal(merged["blocks"][module][name], base_copy["blocks"][module][name])
    np.testing.assert_array_equal(merged["embed"], base_copy["embed"])


def test_lora_settings_are_checked():
    assert set(LORA_TARGETS) == set(PROJECTIONS)
    cfg = replace(lora_config(), data=DataConfig(tokenizer="char"), train=TrainConfig(init_from="runs/base"))
    validate(cfg)
    pt = cfg.posttrain
    bad = [
        (replace(cfg, posttrain=replace(pt, lora_targets=("q", "query"))), "lora_targets=q,query: name each once"),
        (replace(cfg, posttrain=replace(pt, lora_targets=("q", "q"))), "lora_targets=q,q: name each once"),
        (replace(cfg, model=replace(cfg.model, family="gpt2")), "'gate', which model.family='gpt2' lacks"),
        (replace(cfg, posttrain=replace(pt, stage="")), "adapts a trained model"),
        (replace(cfg, posttrain=replace(pt, lora_alpha=0.0)), "lora_alpha=0.0: must be positive"),
        (replace(cfg, posttrain=replace(pt, lora_rank=-1)), "lora_rank=-1: use 0"),
        (replace(cfg, optim=replace(cfg.optim, name="muon")), "LoRA's adapters train with AdamW"),
    ]
    for bad_cfg, message in bad:
        with pytest.raises(ConfigError, match=message):
            validate(bad_cfg)


SHARDED = (2, 2, 2)  # data, fsdp, tensor


def worker_sharded() -> dict:
    """LoRA steps on one device and on SHARDED: losses, the adapters' specs, and whether the merged weights are laid
    out as the base's."""
    model = ModelConfig(
        vocab_size=512, block_size=16, n_layer=2, n_head=4, n_embd=32, kernels="reference", compute_dtype="float32"
    )
    cfg = Config(
        model=model,
        optim=OptimConfig(warmup_steps=0),
        train=TrainConfig(batch_size=8),
        posttrain=PosttrainConfig(stage="sft", seq_len=16, lora_rank=4),
    )
    tokens = np.random.default_rng(0).integers(0, 512, (3, 8, 17)).astype(np.int32)
    out = {}
    for shape in ((1, 1, 1), SHARDED):
        shaped = replace(cfg, mesh=replace(cfg.mesh, data=shape[0], fsdp=shape[1], tensor=shape[2]))
        mesh = sharding.make_mesh(shaped, jax.devices()[: math.prod(shape)])
        full, _ = step_lib.make_trainer(replace(shaped, posttrain=PosttrainConfig()), mesh)
        trainer, _ = step_lib.make_trainer(shaped, mesh)
        with jax.set_mesh(mesh):
            base = step_lib.init_state(replace(shaped, posttrain=PosttrainConfig()), full)["params"]
            state = step_lib.init_state(shaped, trainer, base)
            train_step, losses = trainer.jit_train_step(), []
            for t in tokens:
                batch = sharding.global_batch({"inputs": t[:, :-1], "targets": t[:, 1:]}, mesh, 8)
                state, metrics = train_step(state, batch)
                losses.append(float(metrics["loss"]))
            merged = trainer.model_params(state)
        laid_out = jax.tree.map(lambda m, b: m.sharding == b.sharding, merged, state["frozen"])
        out[str(shape)] = {
            "losses": losses,
            "specs": {
                jax.tree_util.keystr(path, simple=True, separator="/"): list(x.sharding.spec)
                for path, x in jax.tree_util.tree_leaves_with_path(state["params"])
            },
            "merged_laid_out_as_base": jax.tree.leaves(laid_out),
        }
    return out


def test_sharded_lora_steps_equal_one_device():
    got = run_worker(__file__, "sharded")
    ref, sharded = got[str((1, 1, 1))], got[str(SHARDED)]
    np.testing.assert_allclose(sharded["losses"], ref["losses"], rtol=1e-5)
    assert all(sharded["merged_laid_out_as_base"])
    # A takes its kernel's input axes' placement, B its output axes'; the rank axis is never split
    expected = {
        "attn/q": ([None, "fsdp", None], [None, None, "tensor", None]),
        "attn/o": ([None, "tensor", None, None], [None, None, "fsdp"]),
        "mlp/up": ([None, "fsdp", None], [None, None, "tensor"]),
        "mlp/down": ([None, "tensor", None], [None, None, "fsdp"]),
    }
    for name, (a, b) in expected.items():
        assert [sharded["specs"][f"blocks/{name}/lora_a"], sharded["specs"][f"blocks/{name}/lora_b"]] == [a, b]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_sft(tiny_lineage):
    """A LoRA SFT run (rank 4, every default target) of 4 steps from the lineage's base, and what it printed."""
    sft = tiny_lineage["sft_cfg"]
    cfg = replace(
        sft,
        name="lora",
        train=replace(sft.train, steps=4, eval_every=2, checkpoint_every=2, keep_checkpoints=3),
        posttrain=replace(sft.posttrain, lora_rank=4),
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = run(cfg, tiny_lineage["root"] / "lora", make_stage=sft_stage)
    return cfg, tiny_lineage["root"] / "lora", summary, out.getvalue()


@pytest.mark.slow
def test_lora_sft_run_saves_a_frozen_base_and_resumes_exactly(lora_sft, tiny_lineage, tmp_path):
    cfg, run_dir, summary, printed = lora_sft
    line = next(x for x in printed.splitlines() if x.startswith("LoRA: "))
    assert "rank 4, alpha 16 (scale 4), targets q, k, v, o, up, down" in line, line
    assert summary["params"] == tiny_lineage["base"]["params"]  # the model's count, not the adapters'

    mesh = sharding.make_mesh(cfg)
    trainer, abstract_state = step_lib.make_trainer(cfg, mesh)
    mngr = checkpoint.manager(run_dir, read_only=True)
    state = checkpoint.restore_state(mngr, 4, abstract_state)
    mngr.close()
    base = checkpoint.restore_latest_params(
        tiny_lineage["root"] / "base", cfg.model, step_lib.model_layout(abstract_state)
    )
    jax.tree.map(np.testing.assert_array_equal, state["frozen"], base)  # the saved base is the start, untouched
    # every reader of the run gets the merged model
    merged = checkpoint.restore_latest_params(run_dir, cfg.model, step_lib.model_layout(abstract_state))
    jax.tree.map(np.testing.assert_array_equal, merged, trainer.model_params(state))
    assert not np.array_equal(merged["blocks"]["attn"]["q"], base["blocks"]["attn"]["q"])

    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    kept = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 2]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    run(cfg, resumed, progress=False, make_stage=sft_stage)
    losses = lambda d: [(r["step"], r.get("loss"), r.get("val_loss")) for r in _records(d)]  # noqa: E731
    assert losses(resumed) == losses(run_dir)


@pytest.mark.slow
def test_lora_dpo_from_a_lora_sft_run_starts_at_its_merged_model(lora_sft, tiny_lineage):
    dpo = tiny_lineage["dpo_cfg"]
    cfg = start_config(
        replace(
            dpo,
            name="lora_dpo",
            train=replace(dpo.train, init_from=str(lora_sft[1]), steps=1),
            posttrain=replace(dpo.posttrain, lora_rank=2, lora_targets=("v", "down")),
        )
    )
    run(cfg, tiny_lineage["root"] / "lora_dpo", progress=False, make_stage=dpo_stage)
    first = next(r for r in _records(tiny_lineage["root"] / "lora_dpo") if "loss" in r)
    # policy (merged SFT + fresh adapters) and reference (merged SFT) are one model: every margin is 0, up to the
    # rounding of two programs (the policy's merges its weights inside the step, which XLA may fuse differently)
    assert abs(first["margin"]) < 1e-6 and abs(first["loss"] - math.log(2)) < 1e-6


@pytest.mark.slow
def test_lora_rl_from_a_lora_sft_run_samples_and_starts_at_its_merged_model(lora_sft, tiny_lineage):
    root = tiny_lineage["root"]
    problems = write_jsonl(
        root / "lora_sums.jsonl",
        [{"prompt": q, "answer": a.rstrip("."), "checker": "numeric"} for q, a, _ in arithmetic()],
    )
    sft = lora_sft[0]
    cfg = start_config(
        replace(
            sft,
            name="lora_rl",
            train=replace(sft.train, init_from=str(lora_sft[1]), steps=2, batch_size=8, log_every=1),
            posttrain=PosttrainConfig(
                stage="rl", prompts=(f"tasks:{problems}",), val_fraction=0.2, seq_len=32, group_size=4, lora_rank=2
            ),
        )
    )
    run(cfg, root / "lora_rl", progress=False, make_stage=rl_stage)
    first = next(r for r in _records(root / "lora_rl") if "loss" in r)
    assert first["kl"] == 0  # the policy that sampled (merged SFT + fresh adapters) is the reference (merged SFT)


@pytest.mark.slow
def test_hf_export_of_a_lora_run_gives_transformers_its_logits(lora_sft, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, run_dir, _, _ = lora_sft
    out = hf_command.export(run_dir, tmp_path / "hf")
    assert json.loads((out / "jaxllm.json").read_text())["posttrain"]["lora_rank"] == 0  # whole weights
    loaded = checkpoint.load_run(run_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, loaded.cfg.model.vocab_size, (2, loaded.cfg.model.block_size))
    ours = np.asarray(nnx.merge(loaded.graphdef, loaded.params)(jnp.asarray(tokens, jnp.int32))[0])
    with torch.no_grad():
        theirs = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    print(f"max |logit difference|, transformers vs jaxllm: {np.abs(theirs - ours).max():.3g}")
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


if __name__ == "__main__":
    print(json.dumps({"sharded": worker_sharded}[sys.argv[1]]()))
