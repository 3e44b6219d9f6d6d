"""Held-out loss and bits-per-byte.

Bits-per-byte divides the summed nats over scored tokens by ln 2 and by the UTF-8 bytes those same tokens stand
for (each token's byte length from the tokenizer; <bos> and other specials count 0 bytes). That makes the figure
comparable across tokenizers and with compressors such as xz on the same text.
"""

from __future__ import annotations

import math

import jax


def bits_per_byte(nats: float, n_bytes: float) -> float:
    return nats / math.log(2) / n_bytes


def evaluate(eval_step, params, batches: list[dict], token_bytes: jax.Array) -> dict:
    """Loss (nats/token) and bits-per-byte over fixed batches of global device arrays.
    token_bytes: the tokenizer's (vocab,) per-token byte table, replicated on the mesh."""
    nats = tokens = n_bytes = 0.0
    for batch in batches:
        out = jax.device_get(eval_step(params, batch, token_bytes))
        nats, tokens, n_bytes = nats + float(out["nats"]), tokens + float(out["tokens"]), n_bytes + float(out["bytes"])
    return {
        "val_loss": nats / tokens,
        "val_bpb": bits_per_byte(nats, n_bytes),
        "val_tokens": tokens,
        "val_bytes": n_bytes,
    }
