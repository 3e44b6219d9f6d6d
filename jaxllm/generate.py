"""Sampling with a KV cache: one prefill over the (left-padded) prompts, then one-token decode steps.

The prefill and the decode step are each compiled once per (batch, cache length) shape; the decode step writes
one new key/value per layer into the preallocated cache and never recomputes past tokens. Sampling: temperature,
top-k and top-p (nucleus) with a seed; temperature 0 is greedy.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.config import ModelConfig
from jaxllm.model import init_cache
from jaxllm.tokenizer import BOS, EOS


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    seed: int = 0


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """logits (B,V) float32 -> token ids (B,). The settings are static (compiled in)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest set whose mass reaches top_p: a token stays if the mass before it is below top_p
        cutoff_index = jnp.sum(cumulative - jax.nn.softmax(sorted_logits, axis=-1) < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0,))
def _prefill(graphdef, params, tokens, positions, cache):
    logits, cache = nnx.merge(graphdef, params)(tokens, positions, cache, jnp.int32(0))
    return logits[:, -1], cache


@functools.partial(jax.jit, static_argnums=(0, 6), donate_argnums=(3,))
def _decode(graphdef, params, token, cache, position, index, sampling: tuple):
    """One step: the newest token (B,) at `position` (B,) written at cache slot `index` -> next token (B,)."""
    logits, cache = nnx.merge(graphdef, params)(token[:, None], position[:, None], cache, index)
    temperature, top_k, top_p, key = sampling[0], sampling[1], sampling[2], jax.random.fold_in(
        jax.random.key(sampling[3]), index)
    return sample_logits(logits[:, -1], key, temperature, top_k, top_p), logits[:, -1], cache


def generate_tokens(graphdef: nnx.GraphDef, params: dict, cfg: ModelConfig, prompts: list[list[int]],
                    sampling: SamplingConfig, stop_ids: tuple[int, ...] = (EOS, BOS)) -> Iterator[np.ndarray]:
    """Yields the next token of every row, (B,) int, step by step, until every row has emitted a stop id or the
    budget is used; rows that stopped keep yielding tokens the caller ignores. Prompts longer than the context
    lose their start."""
    limit = cfg.block_size
    max_new = max(1, min(sampling.max_new_tokens, limit - 1))
    prompts = [p[-(limit - max_new):] or [BOS] for p in prompts]
    width = max(map(len, prompts))
    b = len(prompts)
    tokens = np.zeros((b, width), np.int32)
    positions = np.full((b, width), -1, np.int32)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at the same column
        tokens[i, width - len(p):] = p
        positions[i, width - len(p):] = np.arange(len(p))
    cache = init_cache(cfg, b, width + max_new)
    last_logits, cache = _prefill(graphdef, params, jnp.asarray(tokens), jnp.asarray(positions), cache)
    key = jax.random.fold_in(jax.random.key(sampling.seed), width - 1)  # keyed by the input's cache slot
    token = sample_logits(last_logits, key, sampling.temperature, sampling.top_k, sampling.top_p)
    position = jnp.asarray(positions[:, -1] + 1)
    done = np.zeros(b, bool)
    settings = (sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed)
    for step in range(max_new):
        host_token = np.asarray(token)
        done |= np.isin(host_token, stop_ids)
        yield host_token
        if done.all() or step == max_new - 1:
            return
        token, _, cache = _decode(graphdef, params, token, cache, position, jnp.int32(width + step), settings)
        position = position + 1


def complete(graphdef: nnx.GraphDef, params: dict, cfg: ModelConfig, encode: Callable, decode: Callable,
             prompts: list[str], sampling: SamplingConfig) -> list[str]:
    """Text in, text out: each prompt's continuation up to its first stop token."""
    outputs: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    for step_tokens in generate_tokens(graphdef, params, cfg, [[BOS] + encode(p) for p in prompts], sampling):
        for i, t in enumerate(step_tokens):
            if not stopped[i]:
                stopped[i] = int(t) in (EOS, BOS)
                if not stopped[i]:
                    outputs[i].append(int(t))
    return [decode(o) for o in outputs]
