"""Where parallelism lives: the device mesh, the one logical-axis rules table, and the shardings derived from it.

The model names its parameter axes ('vocab', 'embed', 'mlp', 'heads', ...); RULES maps each name to a mesh axis.
Megatron tensor parallelism falls out of the table: 'mlp', 'heads' and 'kv_heads' split over `tensor`, so the
up/QKV projections are column-parallel and the down/out projections row-parallel (one all-reduce per block half);
the vocabulary splits over `tensor` too. FSDP (ZeRO-3) splits the 'embed' axis of every parameter, and with it the
optimizer state, over `fsdp`. The batch splits over (data, fsdp).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxllm.config import Config, ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axis (or axes, or None: replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "position": None,
    "layers": None,
    "lora_rank": None,  # a LoRA adapter's rank axis (jaxllm.train.lora): a few columns, never worth splitting
}


def mesh_shape(mesh_cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """Resolves a -1 axis to the devices left over; raises ConfigError when the sizes do not fit the devices."""
    sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise ConfigError(
                f"mesh {dict(zip(AXES, sizes))}: the fixed axes ({fixed} devices) do not divide the "
                f"{n_devices} available devices; choose sizes whose product divides {n_devices}"
            )
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise ConfigError(
            f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} uses {math.prod(sizes)} devices "
            f"but {n_devices} are available; make the product {n_devices} or set one axis to -1"
        )
    return tuple(sizes)


def make_mesh(cfg: Config, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(cfg.mesh, len(devices))
    check_divisibility(cfg, shape)
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def check_divisibility(cfg: Config, shape: tuple[int, int, int]) -> None:
    """Every sharded dimension must divide by the product of the mesh axes that split it."""
    data, fsdp, tensor = shape
    m = cfg.model
    checks = [
        ("train.batch_size", cfg.train.batch_size, data * fsdp, "mesh.data * mesh.fsdp"),
        ("model.n_head", m.n_head, tensor, "mesh.tensor"),
        ("model.n_kv_head (kv heads)", m.kv_heads, tensor, "mesh.tensor"),
        ("MLP width (model.mlp_hidden)", m.hidden, tensor, "mesh.tensor"),
        ("model.vocab_size", m.vocab_size, tensor, "mesh.tensor"),
        ("model.n_embd", m.n_embd, fsdp, "mesh.fsdp"),
    ]
    for name, value, by, axes in checks:
        if value % by:
            raise ConfigError(f"{name}={value} is not divisible by {axes}={by}: change one of them")


def logical_to_spec(names: tuple[str | None, ...]) -> P:
    missing = [n for n in names if n is not None and n not in RULES]
    if missing:
        raise KeyError(f"logical axis names {missing} have no entry in jaxllm.sharding.RULES")
    return P(*(None if n is None else RULES[n] for n in names))


def param_specs(abstract_params: nnx.State) -> dict:
    """A pure dict of PartitionSpecs mirroring the parameters, read from each parameter's logical names."""

    def spec(var):
        return logical_to_spec(var.get_metadata().get("out_sharding") or (None,) * var.value.ndim)

    return nnx.to_pure_dict(jax.tree.map(spec, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Pins an activation's layout by logical names, for the few places where XLA's partitioner would otherwise
    pick a costly one; a no-op outside `jax.set_mesh`, so single-device code never sees a mesh."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def named(mesh: Mesh, specs):
    """PartitionSpecs -> NamedShardings on this mesh (same tree structure)."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(RULES["batch"], None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_block(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """(index, count): this process loads block `index` of the global batch cut into `count` equal blocks of rows,
    the rows its own devices hold under the batch sharding; pass them to the loader as its process index and count.

    count equals the process count when the batch axes span the processes, and is smaller when processes share
    rows (e.g. tensor parallelism across hosts: every process loads the whole batch)."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((batch_size, 1)).values()
    rows = sorted({r for index in indices for r in range(*index[0].indices(batch_size))})
    size = len(rows)
    if rows != list(range(rows[0], rows[0] + size)) or rows[0] % size or batch_size % size:
        raise ConfigError(
            f"process {jax.process_index()} holds batch rows {rows[0]}..{rows[-1]} of {batch_size} "
            f"not as one aligned block (mesh {dict(mesh.shape)}): put the axes that span hosts first, "
            "e.g. grow mesh.data"
        )
    return rows[0] // size, batch_size // size


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, batch_size: int) -> dict[str, jax.Array]:
    """Assembles this process's block of rows (see batch_block) into global (batch_size, ...) arrays sharded over
    the batch axes; on one process the block is the whole batch."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (batch_size, *v.shape[1:])) for k, v in local.items()
    }


def bytes_per_device(abstract_tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs (or arrays) carrying shardings: each leaf's shard."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract_tree))
