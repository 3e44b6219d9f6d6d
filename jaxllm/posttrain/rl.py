"""Reinforcement learning on verifiable rewards: GRPO (Shao et al. 2024, DeepSeekMath), on the training loop.

Each step takes train.batch_size / posttrain.group_size train problems of the task sources (a pure function of the
step), samples a group of posttrain.group_size replies to each from the current policy with the KV-cache generator
(posttrain.temperature; the key comes from the train state's rng, so a resumed run samples exactly what the
uninterrupted one did), scores every reply with its task's checker (reward 1 or 0) and normalises rewards within
the group: advantage = (reward - group mean) / (group std + GROUP_STD_EPS). The loss is the clipped
policy-gradient objective with a k3 estimate of the KL divergence to the frozen reference (the starting
checkpoint), per reply token, averaged over each reply's tokens and then over the replies:

  ratio = pi(token) / pi_old(token)
  loss  = -mean_replies mean_tokens [min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) - kl_coef * kl]
  kl    = ref / pi - log(ref / pi) - 1          (>= 0, unbiased for KL(pi || ref); Schulman 2020)

pi_old is the policy the replies were sampled from: a sample serves posttrain.updates_per_sample consecutive
steps (the clip bounds how far those later steps move from it), and a resumed run restarts at a step that begins
a sample (the config asks train.checkpoint_every to be a multiple of it). A reply is what follows the prompt up to
and including its stop token (learning to stop is part of the reply) or tasks.REPLY_TOKENS tokens. Groups whose
replies are all right or all wrong have zero advantage and teach nothing; the share that teach is a metric.

Run with `python -m jaxllm.rl --experiment=base_rl`; each evaluation also logs held-out greedy pass@1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import sharding
from jaxllm.config import Config, ConfigError
from jaxllm.inference.generate import SamplingConfig, generate_tokens
from jaxllm.model.scoring import token_logprobs
from jaxllm.posttrain import tasks
from jaxllm.posttrain.chat_template import reply_prompt, stop_ids
from jaxllm.posttrain.common import (
    chat_sample,
    conversation_rows,
    fixed_batches,
    global_rows,
    starting_tokenizer,
    step_indices,
    user_replies,
)
from jaxllm.train import checkpoint
from jaxllm.train.stage import Stage
from jaxllm.train.step import make_trainer, model_layout, sampling_key

GROUP_STD_EPS = 1e-4  # keeps a group with one dissenting reply from an unbounded advantage
EVAL_PROBLEMS = 192  # held-out problems whose greedy pass@1 each evaluation logs (a 95% interval of +-7 points)


def group_advantages(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """(N,) rewards, consecutive groups of group_size replies to one prompt -> (N,) group-normalised advantages."""
    groups = rewards.reshape(-1, group_size)
    mean, std = groups.mean(axis=1, keepdims=True), groups.std(axis=1, keepdims=True)
    return ((groups - mean) / (std + GROUP_STD_EPS)).reshape(-1)


def grpo_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    ref_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clip_eps: float,
    kl_coef: float,
) -> tuple[jax.Array, dict]:
    """The GRPO loss and its metrics from per-token log-probabilities (B,T) of the policy, the policy that
    sampled, and the reference; advantages (B,) and the reply mask (B,T)."""
    ratio = jnp.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    clipped = jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps)
    policy = jnp.minimum(ratio * adv, clipped * adv)
    log_ref_ratio = ref_logprobs - logprobs
    kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1
    tokens = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)

    def reply_mean(x):  # over each reply's tokens, then over the replies
        return jnp.mean(jnp.sum(x * mask, axis=-1) / tokens)

    return -reply_mean(policy - kl_coef * kl), {
        "kl": reply_mean(kl),
        "clip_frac": reply_mean((jnp.abs(ratio - 1) > clip_eps).astype(jnp.float32)),
    }


def make_loss_fn(clip_eps: float, kl_coef: float):
    """(params, graphdef, batch) -> (loss, metrics). The batch: inputs, targets, loss_mask (the reply tokens),
    old_logprobs, ref_logprobs (absent when kl_coef is 0), advantages and rewards (a row's value in every column),
    all (B,T)."""

    def loss_fn(params, graphdef, batch):
        logprobs = token_logprobs(params, graphdef, batch["inputs"], batch["targets"])
        ref = batch["ref_logprobs"] if kl_coef else jax.lax.stop_gradient(logprobs)
        loss, metrics = grpo_loss(
            logprobs, batch["old_logprobs"], ref, batch["advantages"][:, 0], batch["loss_mask"], clip_eps, kl_coef
        )
        return loss, {
            **metrics,
            "reward": jnp.mean(batch["rewards"][:, 0]),
            "teaching": jnp.mean((batch["advantages"][:, 0] != 0).astype(jnp.float32)),
        }

    return loss_fn


def reply_rows(prompts: list[list[int]], replies: list[list[int]], seq_len: int, pad: int) -> dict[str, np.ndarray]:
    """Prompt + reply token rows {'inputs', 'targets', 'loss_mask': (N, seq_len)}, the mask on the reply's tokens;
    a row too long keeps its prompt's end (the generator cut it the same way)."""
    n = len(prompts)
    ids = np.full((n, seq_len + 1), pad, np.int32)
    mask = np.zeros((n, seq_len + 1), np.float32)
    for i, (prompt, reply) in enumerate(zip(prompts, replies)):
        prompt = prompt[-(seq_len + 1 - len(reply)) :]
        ids[i, : len(prompt) + len(reply)] = prompt + reply
        mask[i, len(prompt) : len(prompt) + len(reply)] = 1
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask[:, 1:]}


def sample_replies(
    cfg: Config, graphdef, params, prompts: list[list[int]], stops: tuple[int, ...], key
) -> list[list[int]]:
    """Each prompt's sampled reply tokens, up to and including its first stop token (one of stops)."""
    sampling = SamplingConfig(max_new_tokens=tasks.REPLY_TOKENS, temperature=cfg.posttrain.temperature)
    replies: list[list[int]] = [[] for _ in prompts]
    stopped = np.zeros(len(prompts), bool)
    for step_tokens in generate_tokens(graphdef, params, cfg.model, prompts, sampling, stops, key):
        for i in np.flatnonzero(~stopped):
            replies[i].append(int(step_tokens[i]))
        stopped |= np.isin(step_tokens, stops)
    return replies


def _problems(pt) -> tuple[list[tasks.Problem], list[tasks.Problem]]:
    train, heldout = [], []
    for source in pt.prompts:
        t, h = tasks.load(source, pt.val_fraction)
        train, heldout = train + t, heldout + h
    if not train or not heldout:
        raise ConfigError(
            f"posttrain.prompts={','.join(pt.prompts)} gives {len(train)} train and {len(heldout)} held-out "
            "problems: RL needs both (more problems, or another posttrain.val_fraction)"
        )
    return train, heldout


def rl_stage(cfg: Config, mesh, progress: bool) -> Stage:
    pt, batch, t = cfg.posttrain, cfg.train.batch_size, cfg.train
    trainer, abstract_state = make_trainer(cfg, mesh)  # for the parameters' structure and shardings only
    tokenizer = starting_tokenizer(cfg)
    stops = stop_ids(tokenizer)
    reference = checkpoint.restore_latest_params(t.init_from, cfg.model, model_layout(abstract_state))
    train, heldout = _problems(pt)
    prompts = [reply_prompt([{"role": "user", "content": p.prompt}], tokenizer) for p in train]
    n_prompts = batch // pt.group_size
    if progress:
        print(
            f"[rl] {len(train)} train problems, {len(heldout)} held out; {n_prompts} problems x {pt.group_size} "
            f"replies a sample at temperature {pt.temperature}, each sample {pt.updates_per_sample} step(s); "
            f"clip {pt.clip_eps}, KL {pt.kl_coef} to the frozen reference {t.init_from}"
        )

    row = sharding.batch_sharding(mesh)
    logprobs_fn = jax.jit(token_logprobs, static_argnums=1, out_shardings=row)
    current: dict = {}  # the sample this and the next steps train on: {'first': its index, 'batch'}

    def make_sample(step, state):
        policy = trainer.model_params(state)
        first = step // pt.updates_per_sample  # the sample's index: its problems are a pure function of it
        chosen = np.repeat(step_indices(len(train), n_prompts, t.seed, first), pt.group_size)
        group_prompts = [prompts[i] for i in chosen]
        replies = sample_replies(cfg, trainer.graphdef, policy, group_prompts, stops, sampling_key(state["rng"]))
        rewards = np.array(
            [
                float(tasks.is_correct(train[i], tokenizer.decode([x for x in r if x not in stops])))
                for i, r in zip(chosen, replies)
            ],
            np.float32,
        )
        rows = reply_rows(group_prompts, replies, pt.seq_len, tokenizer.pad)
        rows["advantages"] = np.repeat(group_advantages(rewards, pt.group_size)[:, None], pt.seq_len, axis=1)
        rows["rewards"] = np.repeat(rewards[:, None], pt.seq_len, axis=1)
        b = global_rows(rows, np.arange(batch), mesh)
        b["old_logprobs"] = logprobs_fn(policy, trainer.graphdef, b["inputs"], b["targets"])
        if pt.kl_coef:
            b["ref_logprobs"] = logprobs_fn(reference, trainer.graphdef, b["inputs"], b["targets"])
        return b

    def train_batch(step, state):
        if current.get("first") != step // pt.updates_per_sample:
            current.update(first=step // pt.updates_per_sample, batch=make_sample(step, state))
        return current["batch"]

    def heldout_pass(graphdef, params) -> dict:
        problems = heldout[:: max(1, len(heldout) // EVAL_PROBLEMS)][:EVAL_PROBLEMS]
        replies = user_replies(graphdef, params, cfg.model, tokenizer, [p.prompt for p in problems], tasks.REPLY_TOKENS)
        return {"pass@1": float(np.mean([tasks.is_correct(p, r) for p, r in zip(problems, replies)]))}

    heldout_answers, _ = conversation_rows(tasks.records(heldout, "conversations"), tokenizer, pt.seq_len)
    keys = ("inputs", "targets", "loss_mask", "old_logprobs", "advantages", "rewards")
    keys += ("ref_logprobs",) if pt.kl_coef else ()
    shapes = {
        k: jax.ShapeDtypeStruct(
            (batch, pt.seq_len), jnp.int32 if k in ("inputs", "targets") else jnp.float32, sharding=row
        )
        for k in keys
    }
    return Stage(
        tokenizer,
        shapes,
        batch * pt.seq_len,
        train_batch,
        fixed_batches(heldout_answers, batch, t.eval_batches, mesh),
        chat_sample(cfg, tokenizer, heldout[0].prompt),
        make_loss_fn(pt.clip_eps, pt.kl_coef),
        eval_extra=heldout_pass,
    )
