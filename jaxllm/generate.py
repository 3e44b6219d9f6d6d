"""Sampling with a KV cache: one prefill over the (left-padded) prompts, then one-token decode steps.

The prefill and the decode step are each compiled once per (batch, cache length) shape; the decode step writes
one new key/value per layer into the preallocated cache and never recomputes past tokens. Where the cache is
large next to the weights, it grows as the generation goes, in at most four lengths (cache_length): a step reads
all of it. Sampling: temperature, top-k and top-p (nucleus) with a seed; temperature 0 is greedy.

CLI: `python -m jaxllm.generate --run_dir=runs/base --prompt="def fibonacci(n):" [--max_new_tokens=200]
[--temperature=0.8] [--top_k=0] [--top_p=0.95] [--seed=0] [--step=N]`: one prompt streams its continuation as it
is sampled; several (`--prompt` repeated) are decoded as one left-padded batch and printed when done.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm import checkpoint
from jaxllm.cli import ArgumentParser, run_main
from jaxllm.config import Config, ConfigError, ModelConfig, config_from_dict
from jaxllm.model import DecodeWeights, abstract_model, decode_weights, init_cache
from jaxllm.tokenizer import BOS, EOS, Tokenizer


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


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(5,))
def _prefill(graphdef, params, weights, tokens, positions, cache):
    """-> the last logits, the cache, and the first decoding step's position and cache index: made here rather than
    on the host, so that they are placed as the decoding loop's own outputs are (host-made arguments made the first
    chunk compile the loop a second time: 0.7 s here)."""
    logits, cache = nnx.merge(graphdef, params)(tokens, positions, cache, jnp.int32(0), weights)
    return logits[:, -1], cache, positions[:, -1] + 1, jnp.int32(tokens.shape[1])


# decoding steps per dispatch: one compiled loop runs them, so that per-token host work (argument handling, reading
# the token) is paid once per chunk; streaming shows the chunk's tokens one by one. Measured here (GPT-2 6 x 384,
# batch 8, bf16, through generate_tokens): 4.4 ms per token with one step per dispatch, 3.9 ms with chunks of 8.
DECODE_CHUNK = 8


@functools.partial(jax.jit, static_argnums=(0, 7, 8), donate_argnums=(4,))
def _decode(graphdef, params, weights, token, cache, position, index, sampling: tuple, steps: int):
    """`steps` decoding steps: from the newest token (B,) at `position` (B,), written at cache slot `index`, to the
    tokens (steps, B) that follow it, the cache, and the next call's token, position and index.
    weights: model.decode_weights(...), made once per generation."""
    model = nnx.merge(graphdef, params)
    temperature, top_k, top_p, seed = sampling

    def step(carry, _):
        token, cache, position, index = carry
        logits, cache = model(token[:, None], position[:, None], cache, index, weights)
        token = sample_logits(logits[:, -1], jax.random.fold_in(jax.random.key(seed), index), temperature, top_k,
                              top_p)
        return (token, cache, position + 1, index + 1), token

    (token, cache, position, index), tokens = jax.lax.scan(step, (token, cache, position, index), length=steps)
    return tokens, token, cache, position, index


def generate_tokens(graphdef: nnx.GraphDef, params: dict, cfg: ModelConfig, prompts: list[list[int]],
                    sampling: SamplingConfig, stop_ids: tuple[int, ...] = (EOS, BOS)) -> Iterator[np.ndarray]:
    """Yields the next token of every row, (B,) int, step by step, until every row has emitted a stop id or the
    budget is used; rows that stopped keep yielding tokens the caller ignores. Prompts longer than the context
    lose their start."""
    if isinstance(params, nnx.State):  # plain arrays: a step's arguments flatten in C++, not through Variables
        params = nnx.to_pure_dict(params)
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
    # the prefill samples the first token; the decoding loop the other max_new - 1, in whole chunks (the tokens
    # after the budget are computed and dropped: one compiled chunk length per generation)
    chunk = max(1, min(DECODE_CHUNK, max_new - 1))
    n_chunks = -(-(max_new - 1) // chunk)
    weights = _decode_weights(params, cfg, b)  # once: no step slices a stack nor casts
    total = width + n_chunks * chunk  # cache slots the whole generation writes
    length = cache_length(width + chunk, total) if cache_grows(cfg, params, weights, b, total) else total
    cache = _init_cache(cfg, b, length)
    last_logits, cache, position, index = _prefill(graphdef, params, weights, jnp.asarray(tokens),
                                                   jnp.asarray(positions), cache)
    key = jax.random.fold_in(jax.random.key(sampling.seed), width - 1)  # keyed by the input's cache slot
    token = sample_logits(last_logits, key, sampling.temperature, sampling.top_k, sampling.top_p)
    settings = (sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed)
    done = np.zeros(b, bool)
    pending, produced = token[None], 0  # (steps, B) tokens not yet yielded, on the device: first the prefill's
    for c in range(n_chunks + 1):
        if c < n_chunks:  # dispatched before the pending tokens reach the host: the device never waits on Python
            if width + (c + 1) * chunk > length:
                length = cache_length(width + (c + 1) * chunk, total)
                cache = _grow_cache(cache, length)
            chunk_tokens, token, cache, position, index = _decode(graphdef, params, weights, token, cache, position,
                                                                  index, settings, chunk)
        for host_token in np.asarray(pending):
            done |= np.isin(host_token, stop_ids)
            yield host_token
            produced += 1
            if done.all() or produced == max_new:
                return
        pending = chunk_tokens


_decode_weights = jax.jit(decode_weights, static_argnums=(1, 2))


def cache_length(needed: int, total: int) -> int:
    """The KV cache's length while `needed` of a generation's `total` slots are written: a whole number of quarters of
    the total (in multiples of 64), so that a generation compiles at most four decoding loops. Every decoding step
    reads its whole cache, and at batch 8 and 256 slots the six layers' float32 caches (38 MB) outgrow this CPU's
    caches: GPT-2 6 x 384 in bf16 decoded 240 new tokens at 1,966 tokens/s on one 256-slot cache, 2,143 on caches
    of 64, 128, 192 and 256 slots (python -m jaxllm.bench generate --new_tokens=256)."""
    step = 64 * -(-total // 256)
    return min(total, step * -(-needed // step))


@functools.lru_cache(maxsize=64)
def _cache_bytes(cfg: ModelConfig, batch: int, length: int) -> int:
    """init_cache's bytes, from its shapes (tracing it takes 1.5 ms: kept per shape)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(
        functools.partial(init_cache, cfg, batch, length))))


def cache_grows(cfg: ModelConfig, params: dict, weights: DecodeWeights, batch: int, total: int) -> bool:
    """Whether the cache grows (cache_length) rather than starting whole: where a step's reading all of it costs at
    least a quarter of its reading the weights. Measured here, GPT-2 6 x 384, 240 new tokens: batch 8 in bf16 (38 MB
    of cache against 27 MB of weights) 2,198 against 1,907 tokens/s; batch 2 (9 against 27 MB) 881 against 834; one
    row in float32 (5 against 55 MB) 538 against 526, within noise, where growing would cost up to three more
    compilations."""
    head = params["embed"] if params.get("head") is None else params["head"]  # read as it is unless weights has one
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(weights)) + (head.nbytes if weights.head is None else 0)
    return 4 * _cache_bytes(cfg, batch, total) >= weight_bytes


@functools.partial(jax.jit, static_argnums=(1,))
def _grow_cache(cache: tuple, length: int) -> tuple:
    """The cache (init_cache) padded to `length` slots: empty keys and values, position -1."""
    def grow(layer):
        def pad(a, axis, value):
            widths = [(0, length - a.shape[axis] if i == axis else 0) for i in range(a.ndim)]
            return jnp.pad(a, widths, constant_values=value)

        return {"k": pad(layer["k"], 2, 0), "v": pad(layer["v"], 1, 0), "pos": pad(layer["pos"], 1, -1)}
    return tuple(map(grow, cache))


_init_cache = jax.jit(init_cache, static_argnums=(0, 1, 2))


def _prompt_ids(prompt: str | list[int], encode: Callable) -> list[int]:
    """A text prompt starts a document (<bos>); token ids (e.g. a rendered chat) are used as they are."""
    return [BOS] + encode(prompt) if isinstance(prompt, str) else prompt


def complete(graphdef: nnx.GraphDef, params: dict, cfg: ModelConfig, encode: Callable, decode: Callable,
             prompts: list[str] | list[list[int]], sampling: SamplingConfig,
             stop_ids: tuple[int, ...] = (EOS, BOS)) -> list[str]:
    """Text (or token ids) in, text out: each prompt's continuation up to its first stop token."""
    outputs: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    for step_tokens in generate_tokens(graphdef, params, cfg, [_prompt_ids(p, encode) for p in prompts], sampling,
                                       stop_ids):
        for i, t in enumerate(step_tokens):
            if not stopped[i]:
                stopped[i] = int(t) in stop_ids
                if not stopped[i]:
                    outputs[i].append(int(t))
    return [decode(o) for o in outputs]


def stream(graphdef: nnx.GraphDef, params: dict, cfg: ModelConfig, tokenizer: Tokenizer, prompt: str | list[int],
           sampling: SamplingConfig, stop_ids: tuple[int, ...] = (EOS, BOS)) -> Iterator[str]:
    """One prompt's (text or token ids) continuation as text pieces, yielded as soon as they decode to whole
    characters, up to its first stop token."""
    ids: list[int] = []
    shown = ""
    for step_tokens in generate_tokens(graphdef, params, cfg, [_prompt_ids(prompt, tokenizer.encode)], sampling,
                                       stop_ids):
        token = int(step_tokens[0])
        if token in stop_ids:
            break
        ids.append(token)
        # decode everything so far: a piece alone can be half a UTF-8 character (byte fallback) or lose its space
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    text = tokenizer.decode(ids)
    if len(text) > len(shown):
        yield text[len(shown):]


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    cfg: Config
    graphdef: nnx.GraphDef
    params: dict  # pure dict of float32 arrays on the first device
    tokenizer: Tokenizer
    step: int


def load_run(run_dir: pathlib.Path, step: int | None = None) -> LoadedRun:
    """The parameters, config and tokenizer of a run's checkpoint (the latest unless `step` is given)."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--run_dir={run_dir} holds no checkpoints: train first (python -m jaxllm.train "
                          f"--run_dir={run_dir}) or import one (python -m jaxllm.hf import --run_dir={run_dir})")
    mngr = checkpoint.manager(run_dir, read_only=True)
    steps = mngr.all_steps()
    step = max(steps) if step is None and steps else step
    if step not in steps:
        raise ConfigError(f"--step={step}: {run_dir} has checkpoints at steps {sorted(steps)}; pick one of them")
    meta = checkpoint.read_meta(mngr, step)
    cfg = config_from_dict(meta["config"])
    graphdef, abstract_params = nnx.split(abstract_model(cfg.model), nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          nnx.to_pure_dict(abstract_params))
    params = checkpoint.restore_params(mngr, step, target)
    mngr.close()
    return LoadedRun(cfg, graphdef, params, checkpoint.tokenizer_from_meta(meta, run_dir), step)


def add_sampling_flags(parser: argparse.ArgumentParser, defaults: SamplingConfig = SamplingConfig()) -> None:
    """--max_new_tokens, --temperature, --top_k, --top_p, --seed: one flag per SamplingConfig field."""
    for f in dataclasses.fields(SamplingConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=getattr(defaults, f.name))


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    sampling = SamplingConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig)})
    if sampling.temperature < 0 or sampling.top_k < 0 or not 0 < sampling.top_p <= 1:
        raise ConfigError(f"--temperature={sampling.temperature}, --top_k={sampling.top_k}, --top_p={sampling.top_p}:"
                          " need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
    return sampling


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m jaxllm.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--prompt", action="append", help="repeat for a batch of prompts")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    add_sampling_flags(parser)
    args = parser.parse_args(argv)
    sampling = sampling_from_args(args)
    run = load_run(pathlib.Path(args.run_dir), args.step)
    prompts = args.prompt or [""]
    try:
        for prompt in prompts:
            run.tokenizer.encode(prompt)
    except ValueError as e:
        raise ConfigError(f"--prompt: {e}") from None
    if len(prompts) == 1:
        print(prompts[0], end="", flush=True)
        for piece in stream(run.graphdef, run.params, run.cfg.model, run.tokenizer, prompts[0], sampling):
            print(piece, end="", flush=True)
        print()
        return 0
    completions = complete(run.graphdef, run.params, run.cfg.model, run.tokenizer.encode, run.tokenizer.decode,
                           prompts, sampling)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        print(f"--- {i}\n{prompt}{completion}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
