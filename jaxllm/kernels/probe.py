"""The matmul peak of this machine's devices, measured once per machine and kept on disk.

It serves two things: MFU figures (achieved FLOP/s over this peak) and `compute_dtype=auto`, which on a CPU picks
bfloat16 only where the measured bf16 peak beats float32's (AVX-512 BF16 and AMX CPUs, not AVX2 ones). The figures
are kept in jaxllm.machine.cache_dir()/probe.json, keyed by JAX version and device kind; delete it to measure
again.
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp

from jaxllm import machine

DTYPES = ("float32", "bfloat16")


def measure_peak(dtype: str, n: int, repeats: int = 8) -> float:
    """FLOP/s of one device on a chain of n x n matmuls in `dtype`, the best of three timings."""
    a = jnp.ones((n, n), dtype)
    # float32 accumulation, as the model multiplies: XLA:CPU's fast bf16 kernels are bf16 x bf16 -> f32
    step = lambda acc, _: (jnp.matmul(acc, a, preferred_element_type=jnp.float32) * 1e-3).astype(dtype)
    chain = jax.jit(lambda x: functools.reduce(step, range(repeats), x))
    chain(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        chain(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * repeats / best


def _key() -> str:
    device = jax.devices()[0]
    return f"jax {jax.__version__} | {device.platform} | {device.device_kind}"


@functools.cache
def peaks() -> dict[str, float]:
    """{dtype: FLOP/s} for float32 and bfloat16 on one device of this machine, from the probe file or measured."""
    path = machine.cache_dir() / "probe.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    if isinstance(stored.get(_key()), dict) and all(d in stored[_key()] for d in DTYPES):
        return stored[_key()]
    n = 1024 if jax.default_backend() == "cpu" else 8192  # large enough to reach the device's peak
    measured = {dtype: measure_peak(dtype, n) for dtype in DTYPES}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"probe.{id(measured)}.tmp")
        tmp.write_text(json.dumps({**stored, _key(): measured}, indent=1))
        tmp.replace(path)  # another process may write the same file: whole files only
    except OSError:
        pass  # an unwritable cache only costs a measurement next time
    return measured


def peak_flops(dtype: str) -> float:
    return peaks()[dtype]
