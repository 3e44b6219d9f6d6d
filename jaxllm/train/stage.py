"""What one kind of training brings to the loop: its tokenizer, batches, loss and end-of-run sample.

`pretraining` builds the default stage (windows of the prepared corpus, next-token loss on every token);
jaxllm.posttrain builds the SFT and DPO stages. The mesh, the jitted step, checkpoints, resume, logging and
held-out evaluation belong to the loop (jaxllm.train.loop).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxllm import sharding
from jaxllm.config import Config, ConfigError
from jaxllm.data import loader
from jaxllm.data.prepare import prepare
from jaxllm.inference.generate import SamplingConfig, complete


@dataclasses.dataclass(frozen=True)
class Stage:
    tokenizer: object  # jaxllm.tokenizer.Tokenizer
    batch_shapes: dict  # leaf name -> jax.ShapeDtypeStruct of the global batch, (train.batch_size, T), sharded
    tokens_per_step: int  # tokens the model trains on per step (throughput and MFU)
    # (step, state) -> global batch: a pure function of the step and the state (read, never changed), so a resumed
    # run is exact; most stages read only the step, reinforcement learning samples from the state's params and rng
    train_batch: Callable
    eval_batches: list  # fixed global batches scored by Trainer.eval_step (their loss_mask applies)
    sample: Callable  # (graphdef, params) -> the text shown and returned at the end
    loss_fn: Callable | None = None  # (params, graphdef, batch) -> (loss, metrics); None: step.mean_loss
    summary: str = ""  # one line on the data, printed under the run's summary
    eval_extra: Callable | None = None  # (graphdef, params) -> {name: float}, logged with every evaluation


def pretraining(cfg: Config, mesh, progress: bool) -> Stage:
    """The default stage: windows of the prepared corpus (cached), next-token loss on every token."""
    prepared = prepare(cfg, progress=progress)
    tokenizer = prepared.tokenizer
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
            f"{cfg.model.vocab_size}; set --model.vocab_size={tokenizer.vocab_size}"
        )
    for split, tokens in (("train", prepared.train_tokens), ("val", prepared.val_tokens)):
        try:
            loader.check_length(tokens, cfg.model.block_size, split)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    batch, length = cfg.train.batch_size, cfg.model.block_size
    block, blocks = sharding.batch_block(mesh, batch)  # this process's rows of each batch

    def train_batch(s, state):
        local = loader.train_batch(prepared.train_tokens, length, batch, cfg.train.seed, s, block, blocks)
        return sharding.global_batch(local, mesh, batch)

    def sample(graphdef, params):
        return (
            cfg.train.sample_prompt
            + complete(
                graphdef,
                params,
                cfg.model,
                tokenizer,
                [cfg.train.sample_prompt],
                SamplingConfig(max_new_tokens=cfg.train.sample_tokens, temperature=0.8, seed=cfg.train.seed),
            )[0]
        )

    eval_batches = [
        sharding.global_batch(b, mesh, batch)
        for b in loader.eval_batches(prepared.val_tokens, length, batch, cfg.train.eval_batches, block, blocks)
    ]
    shape = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=sharding.batch_sharding(mesh))
    summary = (
        f"data: {', '.join(cfg.data.sources)}: {len(prepared.train_tokens) / 1e6:.1f}M train tokens, "
        f"{len(prepared.val_tokens) / 1e6:.2f}M held out, {cfg.data.tokenizer} vocabulary "
        f"{tokenizer.vocab_size:,} ({prepared.dir})"
    )
    return Stage(
        tokenizer,
        {"inputs": shape, "targets": shape},
        batch * length,
        train_batch,
        eval_batches,
        sample,
        summary=summary,
    )
