"""Direct Preference Optimization (Rafailov et al. 2023) against a frozen reference: the starting checkpoint.

  loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

Log-probabilities are summed over the response tokens only (the chat template's assistant mask: the reply and its
<|end|>). The reference's per-token log-probabilities are computed once per batch, by a separate jitted forward
pass without gradients, and travel in the batch to the pure train step; the reference never changes, so a
resumed run recomputes them exactly. At the start (policy = reference) the loss is ln 2 and every margin is 0.
Metrics: loss, reward accuracy (share of pairs whose chosen reward is higher), chosen and rejected rewards
(beta * log-ratio), margin (their difference). Evaluation during training scores the held-out pairs' chosen
replies as conversations (val_loss per reply token); `jaxllm.evaluate` reports the held-out reward accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import sharding
from jaxllm.config import Config, ConfigError
from jaxllm.model.scoring import sequence_logprobs, token_logprobs
from jaxllm.posttrain import chat_data, tasks
from jaxllm.posttrain.chat_template import render, training_row
from jaxllm.posttrain.common import (
    chat_sample,
    conversation_rows,
    fixed_batches,
    global_rows,
    starting_tokenizer,
    step_indices,
    user_replies,
)
from jaxllm.tokenizer import Tokenizer
from jaxllm.train import checkpoint
from jaxllm.train.stage import Stage
from jaxllm.train.step import make_trainer, model_layout

SIDES = ("chosen", "rejected")


def masked_logprobs(params: dict, graphdef, inputs: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """log p(target) at every masked position, 0 elsewhere: (B,T) float32."""
    return token_logprobs(params, graphdef, inputs, targets) * mask


def dpo_loss(
    policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array, beta: float
) -> tuple[jax.Array, dict]:
    """The DPO loss and its metrics from summed response log-probabilities, each (B,)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -jnp.mean(jax.nn.log_sigmoid(margin))
    return loss, {
        "reward_acc": jnp.mean((margin > 0).astype(jnp.float32)),
        "chosen_reward": jnp.mean(chosen_reward),
        "rejected_reward": jnp.mean(rejected_reward),
        "margin": jnp.mean(margin),
    }


def make_loss_fn(beta: float, nll_weight: float = 0.0):
    """(params, graphdef, batch) -> (loss, metrics) for the step. The batch holds, per side s in SIDES,
    s_inputs, s_targets, s_loss_mask and s_ref (the reference's masked_logprobs), all (B,T). nll_weight > 0 adds
    that weight x the chosen replies' mean negative log-likelihood per token (RPO, Pang et al. 2024): plain DPO
    can lower the chosen reply's likelihood as long as the rejected one falls faster, and greedy answers with it."""

    def loss_fn(params, graphdef, batch):
        # one forward pass over both sides: (2B,T)
        both = {
            k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
            for k in ("inputs", "targets", "loss_mask")
        }
        summed = jnp.sum(masked_logprobs(params, graphdef, both["inputs"], both["targets"], both["loss_mask"]), axis=-1)
        policy_chosen, policy_rejected = jnp.split(summed, 2)
        loss, metrics = dpo_loss(
            policy_chosen,
            policy_rejected,
            jnp.sum(batch["chosen_ref"], axis=-1),
            jnp.sum(batch["rejected_ref"], axis=-1),
            beta,
        )
        nll = -jnp.sum(policy_chosen) / jnp.maximum(jnp.sum(batch["chosen_loss_mask"]), 1.0)
        return loss + nll_weight * nll, {**metrics, "dpo_loss": loss, "chosen_nll": nll}

    return loss_fn


def pair_rows(pairs: list[dict], tokenizer: Tokenizer, seq_len: int) -> tuple[dict[str, np.ndarray], int]:
    """{'<side>_inputs', '<side>_targets', '<side>_loss_mask': (N, seq_len)} for the pairs whose both sides fit
    seq_len, and how many did not."""
    rows = []
    for pair in pairs:
        prompt = chat_data.prompt_messages(pair)
        try:
            sides = {
                side: training_row(
                    render(prompt + [{"role": "assistant", "content": pair[side]}], tokenizer), seq_len, tokenizer.pad
                )
                for side in SIDES
            }
        except ValueError:
            continue
        rows.append({f"{side}_{k}": v for side, row in sides.items() for k, v in row.items()})
    if not rows:
        raise ConfigError(f"no preference pair fits posttrain.seq_len={seq_len} tokens: raise it")
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, len(pairs) - len(rows)


def preference_metrics(graphdef, policy: dict, reference: dict, rows: dict[str, np.ndarray], beta: float) -> dict:
    """The DPO loss and metrics of a policy against its reference over pair rows (see pair_rows), as floats."""
    logps = {
        (who, side): sequence_logprobs(graphdef, params, rows, f"{side}_")
        for who, params in (("policy", policy), ("reference", reference))
        for side in SIDES
    }
    loss, metrics = dpo_loss(
        *(
            logps[k]
            for k in (("policy", "chosen"), ("policy", "rejected"), ("reference", "chosen"), ("reference", "rejected"))
        ),
        beta,
    )
    return {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}, "pairs": len(rows["chosen_inputs"])}


OWN_MISTAKES_BATCH = 256  # prompts generated at once


def own_mistakes(cfg: Config, graphdef, params: dict, tokenizer, problems: list[tasks.Problem]) -> list[dict]:
    """Preference pairs of each problem's answer against the model's own greedy reply, where its checker rejects
    the reply: the errors the model makes, rather than near misses it may never produce."""
    questions = [p.prompt for p in problems]
    replies = []
    for i in range(0, len(questions), OWN_MISTAKES_BATCH):
        batch = questions[i : i + OWN_MISTAKES_BATCH]
        replies += user_replies(graphdef, params, cfg.model, tokenizer, batch, tasks.REPLY_TOKENS)
    return [
        {"prompt": p.prompt, "chosen": p.answer, "rejected": r.strip()}
        for p, r in zip(problems, replies)
        if r.strip() and not tasks.is_correct(p, r)
    ]


def _task_problems(pt, n: int) -> list[tasks.Problem]:
    """n train problems of the task sources, drawn evenly (a fixed shuffle)."""
    problems = [p for s in pt.preferences if tasks.is_task_source(s) for p in tasks.load(s, pt.val_fraction)[0]]
    return [problems[i] for i in np.random.default_rng(0).permutation(len(problems))[:n]]


def dpo_stage(cfg: Config, mesh, progress: bool) -> Stage:
    pt, batch = cfg.posttrain, cfg.train.batch_size
    tokenizer = starting_tokenizer(cfg)
    train, heldout = chat_data.load(pt.preferences, "preferences", pt.val_fraction)
    chat_data.check_split(train, heldout, "posttrain.preferences")
    trainer, abstract_state = make_trainer(cfg, mesh)  # for the parameters' structure and shardings only
    reference = checkpoint.restore_latest_params(cfg.train.init_from, cfg.model, model_layout(abstract_state))
    own = []
    if pt.own_mistakes:
        own = own_mistakes(cfg, trainer.graphdef, reference, tokenizer, _task_problems(pt, pt.own_mistakes))
    train = train + own
    train_rows, dropped = pair_rows(train, tokenizer, pt.seq_len)
    heldout_chosen, _ = conversation_rows(
        [{"messages": chat_data.prompt_messages(p) + [{"role": "assistant", "content": p["chosen"]}]} for p in heldout],
        tokenizer,
        pt.seq_len,
    )
    n = len(train_rows["chosen_inputs"])
    if progress:
        print(
            f"[dpo] {n} train pairs ({len(own)} the starting model's wrong replies to {pt.own_mistakes} problems; "
            f"{dropped} longer than posttrain.seq_len={pt.seq_len} left out), "
            f"{len(heldout)} held out; policy and frozen reference from {cfg.train.init_from}, beta {pt.beta}"
        )

    row = sharding.batch_sharding(mesh)
    reference_logprobs = jax.jit(masked_logprobs, static_argnums=1, out_shardings=row)

    def train_batch(step, state):
        b = global_rows(train_rows, step_indices(n, batch, cfg.train.seed, step), mesh)
        for side in SIDES:  # no gradient flows here: the step differentiates only its own params
            b[f"{side}_ref"] = reference_logprobs(
                reference, trainer.graphdef, b[f"{side}_inputs"], b[f"{side}_targets"], b[f"{side}_loss_mask"]
            )
        return b

    shapes = {
        f"{side}_{k}": jax.ShapeDtypeStruct((batch, pt.seq_len), dtype, sharding=row)
        for side in SIDES
        for k, dtype in (
            ("inputs", jnp.int32),
            ("targets", jnp.int32),
            ("loss_mask", jnp.float32),
            ("ref", jnp.float32),
        )
    }
    question = (
        heldout[0]["prompt"] if heldout and isinstance(heldout[0]["prompt"], str) else "What does `textwrap.dedent` do?"
    )
    return Stage(
        tokenizer,
        shapes,
        2 * batch * pt.seq_len,
        train_batch,
        fixed_batches(heldout_chosen, batch, cfg.train.eval_batches, mesh),
        chat_sample(cfg, tokenizer, question),
        make_loss_fn(pt.beta, pt.nll_weight),
    )
