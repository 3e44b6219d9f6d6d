"""What the SFT and DPO stages share: the run they start from, conversations as padded rows, batches as a pure
function of the step, and the chat sample shown at the end.

Both hand a `jaxllm.train.stage.Stage` to `jaxllm.train.loop.run`, so the mesh, the jitted step, checkpoints,
resume and logging are pretraining's own. The model and data settings (and so the tokenizer) come from the
starting run's checkpoint (`train.init_from`): an experiment names the run it starts from, not its shape.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from jaxllm import sharding, storage
from jaxllm.config import Config, ConfigError, config_from_dict, replace, validate
from jaxllm.inference.generate import SamplingConfig, complete
from jaxllm.posttrain.chat_template import render, reply_prompt, stop_ids, training_row
from jaxllm.tokenizer import Tokenizer
from jaxllm.train import checkpoint


def _starting_meta(cfg: Config) -> dict:
    run_dir = storage.path(cfg.train.init_from)  # local or gs://
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(
            f"train.init_from={run_dir} holds no checkpoint: run the stage before this one first "
            "(base: python -m jaxllm.train --experiment=base; SFT: python -m jaxllm.sft "
            "--experiment=base_sft) or pass --train.init_from=RUN_DIR"
        )
    mngr = checkpoint.manager(run_dir, read_only=True)
    meta = checkpoint.read_meta(mngr)
    mngr.close()
    return meta


def start_config(cfg: Config) -> Config:
    """cfg with the model and data settings of the run it starts from (its kernels and dtype as cfg gives them)."""
    saved = config_from_dict(_starting_meta(cfg)["config"])
    model = replace(saved.model, kernels=cfg.model.kernels, compute_dtype=cfg.model.compute_dtype)
    return validate(replace(cfg, model=model, data=saved.data))


def starting_tokenizer(cfg: Config) -> Tokenizer:
    """The tokenizer stored in the starting checkpoint (written beside it, in the starting run's directory)."""
    return checkpoint.tokenizer_from_meta(_starting_meta(cfg), cfg.train.init_from)


def conversation_rows(
    conversations: list[dict], tokenizer: Tokenizer, seq_len: int
) -> tuple[dict[str, np.ndarray], int]:
    """Stacked training rows {'inputs', 'targets', 'loss_mask': (N, seq_len)} of the conversations that fit, and
    how many did not (left out whole: a cut answer would teach the model to stop mid-sentence)."""
    rows = []
    for conversation in conversations:
        try:
            rows.append(training_row(render(conversation["messages"], tokenizer), seq_len, tokenizer.pad))
        except ValueError:
            continue
    if not rows:
        raise ConfigError(f"no conversation fits posttrain.seq_len={seq_len} tokens: raise it")
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, len(conversations) - len(rows)


def step_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    """(batch,) example indices for a step: epochs of fresh permutations of n, a pure function of (seed, step)."""
    positions = np.arange(step * batch, (step + 1) * batch)
    epochs = positions // n
    out = np.empty(batch, np.int64)
    for epoch in np.unique(epochs):
        where = epochs == epoch
        out[where] = np.random.default_rng([seed, int(epoch)]).permutation(n)[positions[where] % n]
    return out


def global_rows(rows: dict[str, np.ndarray], indices: np.ndarray, mesh) -> dict:
    """The global batch made of rows[indices]; this process loads only its own block of them."""
    batch = len(indices)
    block, blocks = sharding.batch_block(mesh, batch)
    mine = indices[block * batch // blocks : (block + 1) * batch // blocks]
    return sharding.global_batch({k: v[mine] for k, v in rows.items()}, mesh, batch)


def fixed_batches(rows: dict[str, np.ndarray], batch: int, n_batches: int, mesh) -> list[dict]:
    """Up to n_batches batches of the first rows, in order; the last is topped up with rows whose loss_mask is
    zero, so every held-out row counts once."""
    n = min(len(rows["inputs"]), batch * n_batches)
    padded = {k: np.concatenate([v[:n], np.zeros((-n % batch, *v.shape[1:]), v.dtype)]) for k, v in rows.items()}
    return [global_rows(padded, np.arange(i, i + batch), mesh) for i in range(0, len(padded["inputs"]), batch)]


def user_replies(
    graphdef, params: dict, model_cfg, tokenizer: Tokenizer, questions: list[str], max_new_tokens: int, temperature=0.0
) -> list[str]:
    """Each question's reply as one user turn of the chat template, up to its stop: greedy, or sampled (every row
    its own draw, seed 0). DPO's own mistakes, RL's held-out pass@1, evaluate and a stage's sample all ask this."""
    return complete(
        graphdef,
        params,
        model_cfg,
        tokenizer,
        [reply_prompt([{"role": "user", "content": q}], tokenizer) for q in questions],
        SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature),
        stop_ids(tokenizer),
    )


def chat_sample(cfg: Config, tokenizer: Tokenizer, question: str) -> Callable:
    """(graphdef, params) -> 'user: question / assistant: greedy reply', the sample shown at a stage's end."""

    def sample(graphdef, params):
        reply = user_replies(graphdef, params, cfg.model, tokenizer, [question], cfg.train.sample_tokens)[0]
        return f"user: {question}\nassistant: {reply}"

    return sample
