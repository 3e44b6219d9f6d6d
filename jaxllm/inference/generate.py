"""Sampling with a KV cache: one prefill over the (left-padded) prompts, then one-token decode steps.

The prefill and the decode step are each compiled once per (batch, cache length) shape; the decode step writes
one new key/value per layer into the preallocated cache and never recomputes past tokens. Where the cache is
large next to the weights, it grows as the generation goes, in at most four lengths (cache_length): a step reads
all of it. Sampling: temperature, top-k and top-p (nucleus) with a seed; temperature 0 is greedy.

The command is `python -m jaxllm.generate` (jaxllm/generate.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.config import ConfigError, ModelConfig
from jaxllm.inference.cache import cache_grows, cache_length, grow_cache, jit_decode_weights, jit_init_cache
from jaxllm.tokenizer import Tokenizer


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
        logits = nucleus(logits, top_p)
    return jax.random.categorical(key, logits).astype(jnp.int32)


def nucleus(logits: jax.Array, top_p: jax.Array | float) -> jax.Array:
    """logits (B,V) with every token outside the smallest set whose probability reaches top_p (a number, or (B,1):
    one per row) set to -inf: a token stays if the mass of the tokens before it is below top_p."""
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    cutoff_index = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index - 1, axis=-1)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample_rows(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """sample_logits with each row's own settings, as traced values: logits (B,V) float32, keys (B,) typed keys,
    temperature and top_p (B,) -> token ids (B,); temperature 0 is greedy. The nucleus sort runs only when some
    row asks for it."""
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    scaled = jax.lax.cond(jnp.any(top_p < 1.0), lambda x: nucleus(x, top_p[:, None]), lambda x: x, scaled)
    sampled = jax.vmap(jax.random.categorical)(keys, scaled)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(5,))
def _prefill(graphdef, params, weights, tokens, positions, cache):
    """-> the last logits, the cache, and the first decoding step's position and cache index: made here rather than
    on the host, so that they are placed as the decoding loop's own outputs are (host-made arguments would make the
    first chunk compile the loop a second time)."""
    logits, cache = nnx.merge(graphdef, params)(tokens, positions, cache, jnp.int32(0), weights)
    return logits[:, -1], cache, positions[:, -1] + 1, jnp.int32(tokens.shape[1])


# decoding steps per dispatch: one compiled loop runs them, so that per-token host work (argument handling, reading
# the token) is paid once per chunk; streaming shows the chunk's tokens one by one
DECODE_CHUNK = 8


@functools.partial(jax.jit, static_argnums=(0, 8, 9), donate_argnums=(4,))
def _decode(graphdef, params, weights, token, cache, position, index, key, sampling: tuple, steps: int):
    """`steps` decoding steps: from the newest token (B,) at `position` (B,), written at cache slot `index`, to the
    tokens (steps, B) that follow it, the cache, and the next call's token, position and index.
    weights: jaxllm.inference.cache.decode_weights(...), made once per generation. key: the generation's sampling
    key, an argument (not compiled in) so that a new seed does not compile the loop again."""
    model = nnx.merge(graphdef, params)
    temperature, top_k, top_p = sampling

    def step(carry, _):
        token, cache, position, index = carry
        logits, cache = model(token[:, None], position[:, None], cache, index, weights)
        token = sample_logits(logits[:, -1], jax.random.fold_in(key, index), temperature, top_k, top_p)
        return (token, cache, position + 1, index + 1), token

    (token, cache, position, index), tokens = jax.lax.scan(step, (token, cache, position, index), length=steps)
    return tokens, token, cache, position, index


def generate_tokens(
    graphdef: nnx.GraphDef,
    params: dict,
    cfg: ModelConfig,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    stop_ids: tuple[int, ...],
    key: jax.Array | None = None,
) -> Iterator[np.ndarray]:
    """Yields the next token of every row, (B,) int, step by step, until every row has emitted a stop id or the
    budget is used; rows that stopped keep yielding tokens the caller ignores. Prompts longer than the context
    lose their start. key: the sampling key (default: jax.random.key(sampling.seed)); reinforcement learning passes
    one from its train state."""
    if isinstance(params, nnx.State):  # plain arrays: a step's arguments flatten in C++, not through Variables
        params = nnx.to_pure_dict(params)
    limit = cfg.block_size
    max_new = max(1, min(sampling.max_new_tokens, limit - 1))
    if not all(prompts):
        raise ValueError("an empty prompt: start it with the tokenizer's bos id")
    prompts = [p[-(limit - max_new) :] for p in prompts]
    width = max(map(len, prompts))
    b = len(prompts)
    tokens = np.zeros((b, width), np.int32)
    positions = np.full((b, width), -1, np.int32)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at the same column
        tokens[i, width - len(p) :] = p
        positions[i, width - len(p) :] = np.arange(len(p))
    # the prefill samples the first token; the decoding loop the other max_new - 1, in whole chunks (the tokens
    # after the budget are computed and dropped: one compiled chunk length per generation)
    chunk = max(1, min(DECODE_CHUNK, max_new - 1))
    n_chunks = -(-(max_new - 1) // chunk)
    weights = jit_decode_weights(params, cfg, b)  # once: no step slices a stack nor casts
    total = width + n_chunks * chunk  # cache slots the whole generation writes
    length = cache_length(width + chunk, total) if cache_grows(cfg, params, weights, b, total) else total
    cache = jit_init_cache(cfg, b, length)
    last_logits, cache, position, index = _prefill(
        graphdef, params, weights, jnp.asarray(tokens), jnp.asarray(positions), cache
    )
    key = jax.random.key(sampling.seed) if key is None else key
    # each token is sampled with the key folded with its input's cache slot
    first_key = jax.random.fold_in(key, width - 1)
    token = sample_logits(last_logits, first_key, sampling.temperature, sampling.top_k, sampling.top_p)
    settings = (sampling.temperature, sampling.top_k, sampling.top_p)
    done = np.zeros(b, bool)
    pending, produced = token[None], 0  # (steps, B) tokens not yet yielded, on the device: first the prefill's
    for c in range(n_chunks + 1):
        if c < n_chunks:  # dispatched before the pending tokens reach the host: the device never waits on Python
            if width + (c + 1) * chunk > length:
                length = cache_length(width + (c + 1) * chunk, total)
                cache = grow_cache(cache, cfg, length)
            chunk_tokens, token, cache, position, index = _decode(
                graphdef, params, weights, token, cache, position, index, key, settings, chunk
            )
        for host_token in np.asarray(pending):
            done |= np.isin(host_token, stop_ids)
            yield host_token
            produced += 1
            if done.all() or produced == max_new:
                return
        pending = chunk_tokens


def _document_end(tokenizer: Tokenizer) -> tuple[int, ...]:
    """<eos>, or a <bos>, which would start another document."""
    return (tokenizer.eos, tokenizer.bos)


def _prompt_ids(prompt: str | list[int], tokenizer: Tokenizer) -> list[int]:
    """A text prompt starts a document (the tokenizer's <bos>); token ids (e.g. a rendered chat) are used as is."""
    return [tokenizer.bos] + tokenizer.encode(prompt) if isinstance(prompt, str) else prompt


def complete(
    graphdef: nnx.GraphDef,
    params: dict,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    prompts: list[str] | list[list[int]],
    sampling: SamplingConfig,
    stop_ids: tuple[int, ...] | None = None,
    key: jax.Array | None = None,
) -> list[str]:
    """Text (or token ids) in, text out: each prompt's continuation up to its first stop token (stop_ids: by
    default the end of a document, _document_end)."""
    stop_ids = _document_end(tokenizer) if stop_ids is None else stop_ids
    outputs: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    for step_tokens in generate_tokens(
        graphdef, params, cfg, [_prompt_ids(p, tokenizer) for p in prompts], sampling, stop_ids, key
    ):
        for i, t in enumerate(step_tokens):
            if not stopped[i]:
                stopped[i] = int(t) in stop_ids
                if not stopped[i]:
                    outputs[i].append(int(t))
    return [tokenizer.decode(o) for o in outputs]


def stream(
    graphdef: nnx.GraphDef,
    params: dict,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    prompt: str | list[int],
    sampling: SamplingConfig,
    stop_ids: tuple[int, ...] | None = None,
) -> Iterator[str]:
    """One prompt's (text or token ids) continuation as text pieces, yielded as soon as they decode to whole
    characters, up to its first stop token (stop_ids: by default the end of a document, _document_end)."""
    stop_ids = _document_end(tokenizer) if stop_ids is None else stop_ids
    ids: list[int] = []
    shown = ""
    for step_tokens in generate_tokens(graphdef, params, cfg, [_prompt_ids(prompt, tokenizer)], sampling, stop_ids):
        token = int(step_tokens[0])
        if token in stop_ids:
            break
        ids.append(token)
        # decode everything so far: a piece alone can be half a UTF-8 character (byte fallback) or lose its space
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown) :]
            shown = text
    text = tokenizer.decode(ids)
    if len(text) > len(shown):
        yield text[len(shown) :]


def add_sampling_flags(parser: argparse.ArgumentParser, defaults: SamplingConfig = SamplingConfig()) -> None:
    """--max_new_tokens, --temperature, --top_k, --top_p, --seed: one flag per SamplingConfig field."""
    for f in dataclasses.fields(SamplingConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=getattr(defaults, f.name))


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    sampling = SamplingConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig)})
    if sampling.temperature < 0 or sampling.top_k < 0 or not 0 < sampling.top_p <= 1:
        raise ConfigError(
            f"--temperature={sampling.temperature}, --top_k={sampling.top_k}, --top_p={sampling.top_p}:"
            " need temperature >= 0, top_k >= 0 and 0 < top_p <= 1"
        )
    return sampling
