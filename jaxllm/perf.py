"""Peak matmul throughput of this machine's devices, measured, for MFU figures (FLOPs per token: jaxllm.scaling)."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp


@functools.cache
def peak_flops(dtype: str, n: int = 1024, repeats: int = 8) -> float:
    """FLOP/s of one device on an n x n matmul chain in `dtype`, best of three timings."""
    a = jnp.ones((n, n), dtype)
    # float32 accumulation, as the model multiplies: XLA:CPU's fast bf16 kernel is bf16 x bf16 -> f32 (a bf16
    # result runs about 5x slower here)
    step = lambda acc, _: (jnp.matmul(acc, a, preferred_element_type=jnp.float32) * 1e-3).astype(dtype)
    chain = jax.jit(lambda x: functools.reduce(step, range(repeats), x))
    chain(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        chain(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * repeats / best
