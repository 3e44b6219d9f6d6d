"""Mesh layouts: same losses as one device, the intended partition specs, the collectives each scheme needs, and
one-line errors for meshes that do not fit.

The multi-device half runs as a worker subprocess with 8 fake CPU devices (`python tests/test_sharding.py`), once
for all layouts; the tests read its JSON.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import sys

import pytest

from jaxllm.config import Config, ConfigError, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from tests.multidevice import run_worker

LAYOUTS = [(8, 1, 1), (1, 8, 1), (1, 1, 2), (1, 1, 4), (2, 2, 2), (4, 1, 2), (2, 4, 1)]
TENSOR_ONLY, FSDP_ONLY = (1, 1, 4), (1, 8, 1)
MUON_LAYOUT = (2, 2, 2)
BATCH, BLOCK, VOCAB, WIDTH, HIDDEN = 8, 16, 512, 32, 128
STEPS = 3


def tiny(shape=(1, 1, 1)) -> Config:
    # the reference kernels: a sharded mesh runs the portable path (what auto picks for several devices)
    model = ModelConfig(
        vocab_size=VOCAB,
        block_size=BLOCK,
        n_layer=2,
        n_head=4,
        n_embd=WIDTH,
        kernels="reference",
        compute_dtype="float32",
    )
    return Config(
        model=model,
        optim=OptimConfig(warmup_steps=0),
        mesh=MeshConfig(*shape),
        train=TrainConfig(steps=10, batch_size=BATCH),
    )


# The intended layout of every gpt2 parameter (stacked layers lead with an unsharded 'layers' axis): Megatron
# column-parallel q/k/v/up and row-parallel o/down over tensor, vocabulary over tensor, 'embed' over fsdp.
EXPECTED_SPECS = {
    "embed": ("tensor", "fsdp"),
    "pos_embed": (None, "fsdp"),
    "norm/scale": ("fsdp",),
    "norm/bias": ("fsdp",),
    "blocks/norm1/scale": (None, "fsdp"),
    "blocks/norm1/bias": (None, "fsdp"),
    "blocks/norm2/scale": (None, "fsdp"),
    "blocks/norm2/bias": (None, "fsdp"),
    "blocks/attn/q": (None, "fsdp", "tensor", None),
    "blocks/attn/k": (None, "fsdp", "tensor", None),
    "blocks/attn/v": (None, "fsdp", "tensor", None),
    "blocks/attn/o": (None, "tensor", None, "fsdp"),
    "blocks/attn/q_bias": (None, "tensor", None),
    "blocks/attn/k_bias": (None, "tensor", None),
    "blocks/attn/v_bias": (None, "tensor", None),
    "blocks/attn/o_bias": (None, "fsdp"),
    "blocks/mlp/up": (None, "fsdp", "tensor"),
    "blocks/mlp/down": (None, "tensor", "fsdp"),
    "blocks/mlp/up_bias": (None, "tensor"),
    "blocks/mlp/down_bias": (None, "fsdp"),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


# ---------------------------------------------------------------------------------------------------------------
# Worker (8 fake devices)


def hlo_collectives(hlo: str) -> list[dict]:
    """Each collective of a compiled module: op, operand shapes, and where it runs: 'fwd' / 'bwd' (the scanned
    layers' forward and backward loop bodies: once per layer) or 'outside'."""
    found = []
    pattern = re.compile(r"= (.+?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
    for line in hlo.splitlines():
        match = pattern.search(line)
        if not match:
            continue
        shapes = [
            (dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in re.findall(r"([a-z]+\d*)\[([\d,]*)\]", match.group(1))
        ]
        op_name = (re.search(r'op_name="([^"]*)"', line) or re.search("()", "")).group(1)
        where = "outside" if "while/body" not in op_name else "bwd" if "transpose(jvp" in op_name else "fwd"
        found.append({"op": match.group(2), "shapes": shapes, "where": where})
    return found


def worker_layouts() -> dict:
    import jax
    import numpy as np

    from jaxllm import sharding
    from jaxllm.train import step as step_lib

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (STEPS, BATCH, BLOCK + 1)).astype(np.int32)

    def train(cfg, shape, collectives: bool) -> dict:
        mesh = sharding.make_mesh(cfg, jax.devices()[: int(np.prod(shape))])
        trainer, abstract_state = step_lib.make_trainer(cfg, mesh)
        with jax.set_mesh(mesh):
            state = step_lib.init_state(cfg, trainer)
            specs = {
                jax.tree_util.keystr(path, simple=True, separator="/"): (
                    list(x.sharding.spec),
                    x.shape,
                    x.addressable_shards[0].data.shape,
                )
                for path, x in jax.tree_util.tree_leaves_with_path(state["params"])
            }
            moment_specs = list({tuple(x.sharding.spec) for x in jax.tree.leaves(state["opt_state"]) if x.ndim})
            batch_shapes = {
                k: jax.ShapeDtypeStruct((BATCH, BLOCK), np.int32, sharding=sharding.batch_sharding(mesh))
                for k in ("inputs", "targets")
            }
            compiled = trainer.jit_train_step().lower(abstract_state, batch_shapes).compile()
            losses = []
            for s in range(STEPS):
                batch = sharding.global_batch({"inputs": tokens[s, :, :-1], "targets": tokens[s, :, 1:]}, mesh, BATCH)
                state, metrics = compiled(state, batch)
                losses.append(float(metrics["loss"]))
        return {
            "losses": losses,
            "specs": specs,
            "moment_specs": moment_specs,
            "collectives": hlo_collectives(compiled.as_text()) if collectives else None,
        }

    results = {
        str(shape): train(tiny(shape), shape, shape in (TENSOR_ONLY, FSDP_ONLY)) for shape in [(1, 1, 1)] + LAYOUTS
    }
    for shape in [(1, 1, 1), MUON_LAYOUT]:  # Muon orthogonalises whole matrices: sharded, XLA gathers them
        cfg = tiny(shape)
        results["muon" + str(shape)] = train(
            dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, name="muon")), shape, False
        )
    return results


# ---------------------------------------------------------------------------------------------------------------
# Tests (one device in this process)


@pytest.fixture(scope="module")
def layouts() -> dict:
    return run_worker(__file__, "layouts")


def _key(shape) -> str:
    return str(tuple(shape))


@pytest.mark.parametrize("shape", LAYOUTS, ids=lambda s: "x".join(map(str, s)))
def test_layout_matches_one_device(layouts, shape):
    ref, got = layouts[_key((1, 1, 1))]["losses"], layouts[_key(shape)]["losses"]
    rel = [abs(a - b) / abs(b) for a, b in zip(got, ref)]
    print(f"layout {shape}: losses {got}, max relative difference {max(rel):.2e}")
    assert max(rel) <= 1e-5, (got, ref)


@pytest.mark.parametrize("shape", LAYOUTS, ids=lambda s: "x".join(map(str, s)))
def test_layout_partition_specs(layouts, shape):
    sizes = dict(zip(("data", "fsdp", "tensor"), shape))
    specs = layouts[_key(shape)]["specs"]
    assert set(specs) == set(EXPECTED_SPECS)
    for name, (spec, global_shape, shard_shape) in specs.items():
        spec = tuple(spec) + (None,) * (len(global_shape) - len(spec))
        assert spec == EXPECTED_SPECS[name], name
        assert tuple(shard_shape) == tuple(d // sizes.get(a, 1) for d, a in zip(global_shape, spec)), name
    # Adam's moments live in the parameters' shards (ZeRO): every non-scalar leaf of the optimizer state has one
    # of the parameters' specs.
    param_specs = {tuple(s[0]) for s in specs.values()}
    assert {tuple(s) for s in layouts[_key(shape)]["moment_specs"]} <= param_specs


def test_muon_sharded_matches_one_device(layouts):
    ref, got = layouts["muon" + _key((1, 1, 1))], layouts["muon" + _key(MUON_LAYOUT)]
    rel = [abs(a - b) / abs(b) for a, b in zip(got["losses"], ref["losses"])]
    print(f"muon on {MUON_LAYOUT}: losses {got['losses']}, max relative difference {max(rel):.2e}")
    assert max(rel) <= 1e-5, (got["losses"], ref["losses"])
    assert ref["losses"][-1] != layouts[_key((1, 1, 1))]["losses"][-1]  # a different optimizer did run
    # Muon's momentum and AdamW's moments (of the parameters Muon leaves to it) live in the parameters' shards;
    # only Muon's three Newton-Schulz coefficients are replicated.
    assert {tuple(s) for s in got["moment_specs"]} <= {tuple(s[0]) for s in got["specs"].values()} | {()}
    assert {tuple(s) for s in got["moment_specs"]} >= {("tensor", "fsdp"), (None, "fsdp", "tensor", None)}


def _per_layer(collectives, where):
    return [c for c in collectives if c["where"] == where]


def test_tensor_parallel_collectives_are_megatron(layouts):
    """Pure tensor parallelism: per layer, one all-reduce of the (B,T,E) activations per block half forward
    (after the row-parallel attention-out and MLP-down) and one per half backward (before the column-parallel QKV and
    MLP-up); nothing gathered, nothing of vocabulary size moved (the vocabulary-parallel head reduces (B,T) max and
    sum for the softmax, never the logits)."""
    collectives = layouts[_key(TENSOR_ONLY)]["collectives"]
    # the model multiplies (B*T, E) rows (jaxllm.model.dense), so an activation may move flattened
    activations = {("f32", (BATCH, BLOCK, WIDTH)), ("f32", (BATCH * BLOCK, WIDTH))}
    for where in ("fwd", "bwd"):
        ops = _per_layer(collectives, where)
        assert [c["op"] for c in ops] == ["all-reduce"] * 2, (where, ops)
        assert all((dtype, tuple(dims)) in activations for c in ops for dtype, dims in c["shapes"]), ops
    counts = collections.Counter(c["op"] for c in collectives)
    assert set(counts) == {"all-reduce"}, counts
    assert not [c for c in collectives if any(VOCAB in dims for _, dims in c["shapes"])]


def test_fsdp_collectives_are_zero3(layouts):
    """Pure FSDP: per layer, the forward all-gathers each of the layer's parameters once, the backward gathers
    again what it needs and reduce-scatters every gradient (XLA:CPU writes a reduce-scatter as an all-reduce
    followed by a slice; TPU and GPU fuse it); no activation is reduced or gathered inside the layers."""
    collectives = layouts[_key(FSDP_ONLY)]["collectives"]
    layer_specs = {
        name: (spec, dims[1:])
        for name, (spec, dims, _) in layouts[_key(FSDP_ONLY)]["specs"].items()
        if name.startswith("blocks/")
    }
    # Parameters are compared by element count: the model multiplies them flattened to 2-D (jaxllm.model.dense),
    # so XLA may gather a (E,H,Dh) weight as (E,H*Dh), or hold a gradient transposed.
    sharded = sorted(math.prod(dims) for spec, dims in layer_specs.values() if "fsdp" in spec)
    fwd, bwd = _per_layer(collectives, "fwd"), _per_layer(collectives, "bwd")
    assert sorted(math.prod(c["shapes"][0][1]) for c in fwd) == sharded and {c["op"] for c in fwd} == {"all-gather"}
    gathered = [math.prod(c["shapes"][0][1]) for c in bwd if c["op"] == "all-gather"]
    assert set(gathered) <= set(sharded)
    # Every gradient of the layer is reduced over the batch shards once, the replicated ones (biases split only
    # over tensor) included.
    reduced = sorted(
        math.prod(dims) for c in bwd if c["op"] in ("all-reduce", "reduce-scatter") for _, dims in c["shapes"]
    )
    assert reduced == sorted(math.prod(dims) for _, dims in layer_specs.values()), reduced
    # Outside the layers: the embedding tables, final norm and head move as parameters (ZeRO-3 gathers the tables
    # before the lookup); no float activation of (B,T) rows moves.
    float_activations = [
        c
        for c in collectives
        if c["op"] != "all-to-all"
        and any(dtype == "f32" and dims[:2] in ((BATCH, BLOCK), (BATCH // 8, BLOCK)) for dtype, dims in c["shapes"])
    ]
    assert not float_activations, float_activations
    assert not [c for c in collectives if c["op"] == "all-to-all" and c["where"] != "outside"]


# ---------------------------------------------------------------------------------------------------------------
# Validation: one-line errors


def _mesh_error(shape, devices=8, **model) -> str:
    from jaxllm import sharding

    cfg = tiny(shape)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))
    with pytest.raises(ConfigError) as err:
        sharding.check_divisibility(cfg, sharding.mesh_shape(cfg.mesh, devices))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_error_product_does_not_match_devices():
    assert "uses 4 devices but 8 are available" in _mesh_error((2, 2, 1))


def test_error_minus_one_does_not_divide():
    assert "do not divide the 8 available devices" in _mesh_error((-1, 3, 1))


def test_error_batch_not_divisible():
    assert "train.batch_size=8 is not divisible by mesh.data * mesh.fsdp=16" in _mesh_error((4, 4, 1), devices=16)


def test_error_heads_not_divisible():
    assert "model.n_head=4 is not divisible by mesh.tensor=8" in _mesh_error((1, 1, 8))


def test_error_kv_heads_not_divisible():
    assert "n_kv_head (kv heads)=2 is not divisible by mesh.tensor=4" in _mesh_error((2, 1, 4), n_kv_head=2)


def test_error_mlp_width_not_divisible():
    assert "MLP width (model.mlp_hidden)=102 is not divisible by mesh.tensor=4" in _mesh_error(
        (2, 1, 4), mlp_hidden=102
    )


def test_error_vocab_not_divisible():
    assert "model.vocab_size=510 is not divisible by mesh.tensor=4" in _mesh_error((2, 1, 4), vocab_size=510)


def test_error_embed_not_divisible_by_fsdp():
    assert "model.n_embd=36 is not divisible by mesh.fsdp=8" in _mesh_error((1, 8, 1), n_embd=36, n_head=4)


if __name__ == "__main__":
    print(json.dumps({"layouts": worker_layouts}[sys.argv[1]]()))
