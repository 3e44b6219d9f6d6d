"""The one log-probability scorer: what pretraining's loss, DPO, evaluation and any later stage compute from.

`token_logprobs` is log p(target | inputs) per position; the train step's cross-entropy is its negative, a
sequence's score its masked sum (`summed_logprobs`, jitted; `sequence_logprobs` over many rows on the host).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def token_logprobs(params: dict, graphdef: nnx.GraphDef, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets[b, t] | inputs[b, :t + 1]), (B,T) float32."""
    logits, _ = nnx.merge(graphdef, params)(inputs)
    return -optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # logit - logsumexp, no (B,T,V) copy


@functools.partial(jax.jit, static_argnums=1)
def summed_logprobs(
    params: dict, graphdef: nnx.GraphDef, inputs: jax.Array, targets: jax.Array, mask: jax.Array
) -> jax.Array:
    """(B,) log-probability of each row's masked targets: a sequence's score."""
    return jnp.sum(token_logprobs(params, graphdef, inputs, targets) * mask, axis=-1)


def sequence_logprobs(
    graphdef: nnx.GraphDef, params: dict, rows: dict[str, np.ndarray], prefix: str = "", batch: int = 16
) -> np.ndarray:
    """(N,) summed log-probabilities of the masked targets of rows {'<prefix>inputs', '<prefix>targets',
    '<prefix>loss_mask'} (a prefix such as 'chosen_' selects one side of a preference pair), in batches of `batch`
    rows on the params' device; the last batch is padded to the same shape, so one compilation serves them all."""
    n = len(rows[f"{prefix}inputs"])
    out = []
    for i in range(0, n, batch):
        part = [rows[f"{prefix}{k}"][i : i + batch] for k in ("inputs", "targets", "loss_mask")]
        short = batch - len(part[0])
        part = [np.concatenate([a, np.zeros((short, *a.shape[1:]), a.dtype)]) for a in part]
        out.append(np.asarray(summed_logprobs(params, graphdef, *part))[: batch - short])
    return np.concatenate(out)
