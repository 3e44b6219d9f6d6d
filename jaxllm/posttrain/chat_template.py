"""The one chat template: a conversation -> token ids and a loss mask. Training, evaluation and chat all call it,
so what a model is trained on and what it is prompted with cannot drift apart.

Layout (role and end tokens are control ids that no text can produce, see jaxllm.tokenizer):
  <bos> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> <|user|> ...
The mask is 1 on exactly the tokens the assistant writes: its text and the <|end|> that closes its turn (so a
model learns when to stop); role tokens, other turns and <bos> are 0. With `add_generation_prompt`, the ids end
with an opening <|assistant|>: the prompt from which a reply is sampled until <|end|>.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxllm.tokenizer import BOS, CHAT_TOKENS, EOS, PAD, SPECIALS

SYSTEM, USER, ASSISTANT, END = (SPECIALS.index(t) for t in CHAT_TOKENS)
ROLE_IDS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


@dataclasses.dataclass(frozen=True)
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where ids[i] is written by the assistant, same length as ids


def check_messages(messages) -> None:
    """Raises ValueError naming the first message that is not {'role': system|user|assistant, 'content': str}."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} objects, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLE_IDS or not isinstance(m.get("content"), str):
            raise ValueError(
                f"message {i} is {m!r:.80}: expected {{'role': one of {sorted(ROLE_IDS)}, 'content': a string}}"
            )


def render(messages: list[dict], encode: Callable[[str], list[int]], add_generation_prompt: bool = False) -> Rendered:
    """Token ids and assistant mask of a conversation ([{'role', 'content'}, ...])."""
    check_messages(messages)
    ids, mask = [BOS], [0]
    for m in messages:
        text = encode(m["content"]) + [END]
        written = int(m["role"] == "assistant")
        ids += [ROLE_IDS[m["role"]]] + text
        mask += [0] + [written] * len(text)
    if add_generation_prompt:
        ids.append(ASSISTANT)
        mask.append(0)
    return Rendered(ids, mask)


def training_row(rendered: Rendered, seq_len: int) -> dict[str, np.ndarray]:
    """One conversation as one row of seq_len next-token pairs, right-padded with <pad> (mask 0 there), so no
    attention crosses into another conversation: {'inputs', 'targets': (T,) int32, 'loss_mask': (T,) float32}.
    Raises ValueError when the conversation needs more than seq_len + 1 tokens (the caller drops it)."""
    n = len(rendered.ids)
    if n > seq_len + 1:
        raise ValueError(f"conversation of {n} tokens does not fit posttrain.seq_len + 1 = {seq_len + 1}")
    ids = np.full(seq_len + 1, PAD, np.int32)
    ids[:n] = rendered.ids
    mask = np.zeros(seq_len + 1, np.float32)
    mask[:n] = rendered.mask
    # the target at position t is ids[t + 1], so its mask is the mask of ids[t + 1]
    return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:]}


STOP_IDS = (END, EOS, BOS)  # a reply ends at <|end|>; <eos>/<bos> would start another document


def reply_prompt(messages: list[dict], encode: Callable[[str], list[int]]) -> list[int]:
    """The ids a reply is sampled after (generate.stream / complete with stop_ids=STOP_IDS)."""
    return render(messages, encode, add_generation_prompt=True).ids
