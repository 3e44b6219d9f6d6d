"""Supervised fine-tuning: next-token loss on the assistant's tokens of chat conversations, nothing else.

One conversation a row (posttrain.seq_len tokens, right-padded), so attention never crosses into another
conversation and padding carries no loss; the loss is pretraining's masked mean (step.mean_loss with the batch's
loss_mask). Evaluation scores the held-out conversations' assistant tokens: val_loss and val_bpb are per
assistant token and byte. Run with `python -m jaxllm.sft --experiment=base_sft`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxllm import sharding
from jaxllm.config import Config
from jaxllm.posttrain import chat_data
from jaxllm.posttrain.common import (
    chat_sample,
    conversation_rows,
    fixed_batches,
    global_rows,
    starting_tokenizer,
    step_indices,
)
from jaxllm.train.stage import Stage


def sft_stage(cfg: Config, mesh, progress: bool) -> Stage:
    pt, batch = cfg.posttrain, cfg.train.batch_size
    tokenizer = starting_tokenizer(cfg)
    train, heldout = chat_data.load(pt.conversations, "conversations", pt.val_fraction)
    chat_data.check_split(train, heldout, "posttrain.conversations")
    train_rows, dropped = conversation_rows(train, tokenizer.encode, pt.seq_len)
    heldout_rows, _ = conversation_rows(heldout, tokenizer.encode, pt.seq_len)
    if progress:
        print(
            f"[sft] {len(train_rows['inputs'])} train conversations ({dropped} longer than posttrain.seq_len="
            f"{pt.seq_len} left out), {len(heldout_rows['inputs'])} held out; starting from {cfg.train.init_from}"
        )

    def train_batch(step):
        return global_rows(train_rows, step_indices(len(train_rows["inputs"]), batch, cfg.train.seed, step), mesh)

    row = sharding.batch_sharding(mesh)
    shapes = {
        "inputs": jax.ShapeDtypeStruct((batch, pt.seq_len), jnp.int32, sharding=row),
        "targets": jax.ShapeDtypeStruct((batch, pt.seq_len), jnp.int32, sharding=row),
        "loss_mask": jax.ShapeDtypeStruct((batch, pt.seq_len), jnp.float32, sharding=row),
    }
    question = heldout[0]["messages"][0]["content"] if heldout else "What does `textwrap.dedent` do?"
    return Stage(
        tokenizer,
        shapes,
        batch * pt.seq_len,
        train_batch,
        fixed_batches(heldout_rows, batch, cfg.train.eval_batches, mesh),
        chat_sample(cfg, tokenizer, question),
    )
