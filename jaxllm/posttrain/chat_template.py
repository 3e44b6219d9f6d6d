"""The one chat template: a conversation -> token ids and a loss mask. Training, evaluation and chat all call it,
so what a model is trained on and what it is prompted with cannot drift apart.

One layout, in the markup of the tokenizer in use (its `chat`: jaxllm.tokenizer.ChatTokens). With jaxllm's chat
tokens (control ids that no text can produce):
  <bos> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> <|user|> ...
and with an imported ChatML checkpoint's, as its own template writes them (roles and ends are several ids):
  <|im_start|>system\\n text <|im_end|>\\n <|im_start|>user\\n text <|im_end|>\\n <|im_start|>assistant\\n ...
The mask is 1 on exactly the tokens the assistant writes: its text and the end that closes its turn (so a model
learns when to stop); role tokens, other turns and <bos> are 0. With `add_generation_prompt`, the ids end with an
opening assistant role: the prompt from which a reply is sampled until the end's first id (stop_ids).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxllm.tokenizer import ROLES, Tokenizer


@dataclasses.dataclass(frozen=True)
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where ids[i] is written by the assistant, same length as ids


def check_messages(messages) -> None:
    """Raises ValueError naming the first message that is not {'role': system|user|assistant, 'content': str}."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} objects, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(
                f"message {i} is {m!r:.80}: expected {{'role': one of {sorted(ROLES)}, 'content': a string}}"
            )


def render(messages: list[dict], tokenizer: Tokenizer, add_generation_prompt: bool = False) -> Rendered:
    """Token ids and assistant mask of a conversation ([{'role', 'content'}, ...])."""
    check_messages(messages)
    chat = tokenizer.chat
    ids, mask = list(chat.start), [0] * len(chat.start)
    for m in messages:
        role = list(chat.roles[m["role"]])
        text = tokenizer.encode(m["content"]) + list(chat.end)
        written = int(m["role"] == "assistant")
        ids += role + text
        mask += [0] * len(role) + [written] * len(text)
    if add_generation_prompt:
        ids += chat.roles["assistant"]
        mask += [0] * len(chat.roles["assistant"])
    return Rendered(ids, mask)


def training_row(rendered: Rendered, seq_len: int, pad: int) -> dict[str, np.ndarray]:
    """One conversation as one row of seq_len next-token pairs, right-padded with the pad id (mask 0 there), so no
    attention crosses into another conversation: {'inputs', 'targets': (T,) int32, 'loss_mask': (T,) float32}.
    Raises ValueError when the conversation needs more than seq_len + 1 tokens (the caller drops it)."""
    n = len(rendered.ids)
    if n > seq_len + 1:
        raise ValueError(f"conversation of {n} tokens does not fit posttrain.seq_len + 1 = {seq_len + 1}")
    ids = np.full(seq_len + 1, pad, np.int32)
    ids[:n] = rendered.ids
    mask = np.zeros(seq_len + 1, np.float32)
    mask[:n] = rendered.mask
    # the target at position t is ids[t + 1], so its mask is the mask of ids[t + 1]
    return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:]}


def stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The ids a sampled reply stops at: the end of its turn, or <eos>/<bos>, which would start another document."""
    return (tokenizer.chat.end[0], tokenizer.eos, tokenizer.bos)


def reply_prompt(messages: list[dict], tokenizer: Tokenizer) -> list[int]:
    """The ids a reply is sampled after (generate.stream / complete with stop_ids(tokenizer))."""
    return render(messages, tokenizer, add_generation_prompt=True).ids
