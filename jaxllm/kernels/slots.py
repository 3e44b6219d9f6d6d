"""Writing new keys and values into a KV cache: every row at one slot, or each row at its own.

A batch decoded together (jaxllm.inference.generate) shares one write slot; a server's batch (jaxllm.serve.engine)
holds unrelated requests, each at its own length, so each row writes at its own slot. Both kernel sets' caches keep
the batch as their leading axis (whole, or as B*KV rows), which is all this needs to know of a layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def write(full: jax.Array, new: jax.Array, index: jax.Array, axis: int) -> jax.Array:
    """`new` written into `full` along `axis` from slot `index`: a scalar (every row there) or (B,) (row b at
    index[b]; with B*KV leading rows, each group of KV rows at its batch row's slot)."""
    new = new.astype(full.dtype)
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice_in_dim(full, new, index, axis)
    rows = jnp.repeat(index, full.shape[0] // index.shape[0])
    return jax.vmap(lambda f, n, i: jax.lax.dynamic_update_slice_in_dim(f, n, i, axis - 1))(full, new, rows)
