"""Supervised fine-tuning: next-token loss on the assistant's tokens of chat conversations, nothing else.

One conversation a row (posttrain.seq_len tokens, right-padded), so attention never crosses into another
conversation and padding carries no loss; the loss is pretraining's masked mean (step.mean_loss with the batch's
loss_mask). Evaluation scores the held-out conversations' assistant tokens: val_loss and val_bpb are per
assistant token and byte. Run with `python -m jaxllm.sft --experiment=base_sft`.

posttrain.text_mix > 0 mixes windows of the starting run's pretraining text into every batch, against forgetting
it: that share of the rows, and of the loss (the batch's loss_mask is weighted so that the loss is
(1 - text_mix) x the mean over assistant tokens + text_mix x the mean over text tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import sharding
from jaxllm.config import Config, ConfigError
from jaxllm.data import loader
from jaxllm.data.prepare import prepare
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


def mixed_rows(chat: dict[str, np.ndarray], text: dict[str, np.ndarray], text_mix: float) -> dict[str, np.ndarray]:
    """Conversation rows and pretraining windows in one batch, their loss_mask weighted so that the masked mean
    is (1 - text_mix) x the conversations' token mean + text_mix x the text's."""
    chat_mask = chat["loss_mask"] * ((1 - text_mix) / max(float(chat["loss_mask"].sum()), 1.0))
    text_mask = np.full(text["inputs"].shape, text_mix / text["inputs"].size, np.float32)
    return {
        "inputs": np.concatenate([chat["inputs"], text["inputs"]]),
        "targets": np.concatenate([chat["targets"], text["targets"]]),
        "loss_mask": np.concatenate([chat_mask, text_mask]).astype(np.float32),
    }


def _pretraining_tokens(cfg: Config, tokenizer) -> np.ndarray:
    """The starting run's pretraining train split, refused if its tokenizer is not the checkpoint's."""
    prepared = prepare(cfg, progress=False)
    if not np.array_equal(prepared.tokenizer.token_bytes(), tokenizer.token_bytes()):
        raise ConfigError(
            f"posttrain.text_mix={cfg.posttrain.text_mix} needs the starting run's pretraining data, but data "
            "prepared from its config has another tokenizer (an imported model has none): set --posttrain.text_mix=0"
        )
    return prepared.train_tokens


def sft_stage(cfg: Config, mesh, progress: bool) -> Stage:
    pt, batch = cfg.posttrain, cfg.train.batch_size
    tokenizer = starting_tokenizer(cfg)
    train, heldout = chat_data.load(pt.conversations, "conversations", pt.val_fraction)
    chat_data.check_split(train, heldout, "posttrain.conversations")
    train_rows, dropped = conversation_rows(train, tokenizer, pt.seq_len)
    heldout_rows, _ = conversation_rows(heldout, tokenizer, pt.seq_len)
    if progress:
        print(
            f"[sft] {len(train_rows['inputs'])} train conversations ({dropped} longer than posttrain.seq_len="
            f"{pt.seq_len} left out), {len(heldout_rows['inputs'])} held out; starting from {cfg.train.init_from}"
            + (f"; {round(batch * pt.text_mix)} of {batch} rows a batch pretraining text" if pt.text_mix else "")
        )

    n_text = round(batch * pt.text_mix)
    text_tokens = _pretraining_tokens(cfg, tokenizer) if n_text else None

    def train_batch(step, state):
        indices = step_indices(len(train_rows["inputs"]), batch - n_text, cfg.train.seed, step)
        if not n_text:
            return global_rows(train_rows, indices, mesh)
        chat = {k: v[indices] for k, v in train_rows.items()}
        text = loader.train_batch(text_tokens, pt.seq_len, n_text, cfg.train.seed, step)
        return global_rows(mixed_rows(chat, text, n_text / batch), np.arange(batch), mesh)

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
