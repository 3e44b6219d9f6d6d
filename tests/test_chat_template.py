"""The chat template (mask on exactly the assistant's tokens, one template for training and generation) and the
chat data (stdlib tasks split by module, JSONL shapes)."""

import json

import numpy as np
import pytest

from jaxllm.config import ConfigError
from jaxllm.posttrain import chat_data
from jaxllm.posttrain.chat_template import render, reply_prompt, stop_ids, training_row
from jaxllm.tokenizer import ROLES, ChatTokens, Tokenizer


class Chars(Tokenizer):
    """jaxllm's special ids; ids from 100 up, one per character: never a special id."""

    def encode(self, text):
        return [100 + ord(c) % 50 for c in text]


TOKENIZER = Chars()
encode = TOKENIZER.encode
SYSTEM, USER, ASSISTANT = (TOKENIZER.chat.roles[r][0] for r in ROLES)
(END,) = TOKENIZER.chat.end


CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo"},
    {"role": "user", "content": "and?"},
    {"role": "assistant", "content": "ok!"},
]


def test_mask_covers_exactly_the_assistant_tokens():
    r = render(CONVERSATION, TOKENIZER)
    expected_ids = (
        [TOKENIZER.bos, SYSTEM]
        + encode("be brief")
        + [END, USER]
        + encode("hi")
        + [END, ASSISTANT]
        + encode("yo")
        + [END, USER]
        + encode("and?")
        + [END, ASSISTANT]
        + encode("ok!")
        + [END]
    )
    assert r.ids == expected_ids and len(r.mask) == len(r.ids)
    written = [i for i, m in zip(r.ids, r.mask) if m]
    assert written == encode("yo") + [END] + encode("ok!") + [END]
    # the masked positions are exactly those after an <|assistant|> up to and including its <|end|>
    inside, expected_mask = False, []
    for i in r.ids:
        expected_mask.append(int(inside))
        inside = (inside and i != END) or i == ASSISTANT
    assert r.mask == expected_mask


def test_generation_prompt_is_the_training_prefix():
    history = CONVERSATION[:4]
    prompt = reply_prompt(history, TOKENIZER)
    assert prompt[-1] == ASSISTANT
    assert render(CONVERSATION, TOKENIZER).ids[: len(prompt)] == prompt
    assert stop_ids(TOKENIZER)[0] == END


class ChatML(Chars):
    """Markup as an imported ChatML checkpoint has it: no opening id, roles and ends of several ids."""

    chat = ChatTokens(start=(), roles={"system": (1, 11, 9), "user": (1, 12, 9), "assistant": (1, 13, 9)}, end=(2, 9))


def test_multi_token_markup_masks_the_reply_and_its_whole_end():
    r = render(CONVERSATION[1:3], ChatML())
    assert r.ids == [1, 12, 9] + encode("hi") + [2, 9, 1, 13, 9] + encode("yo") + [2, 9]
    assert [i for i, m in zip(r.ids, r.mask) if m] == encode("yo") + [2, 9]
    assert reply_prompt(CONVERSATION[1:2], ChatML())[-3:] == [1, 13, 9] and stop_ids(ChatML())[0] == 2


def test_training_row_shifts_and_pads():
    r = render(CONVERSATION[1:3], TOKENIZER)
    row = training_row(r, 16, pad=TOKENIZER.pad)
    n = len(r.ids)
    assert row["inputs"].shape == row["targets"].shape == row["loss_mask"].shape == (16,)
    np.testing.assert_array_equal(row["inputs"][: n - 1], r.ids[:-1])
    np.testing.assert_array_equal(row["targets"][: n - 1], r.ids[1:])
    np.testing.assert_array_equal(row["loss_mask"][: n - 1], r.mask[1:])
    assert (row["inputs"][n:] == TOKENIZER.pad).all() and (row["targets"][n - 1 :] == TOKENIZER.pad).all()
    assert (row["loss_mask"][n - 1 :] == 0).all()  # padding carries no loss
    with pytest.raises(ValueError, match="does not fit"):
        training_row(r, n - 2, pad=TOKENIZER.pad)


def test_bad_messages_are_named():
    with pytest.raises(ValueError, match="message 1"):
        render([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], TOKENIZER)


def test_first_sentence():
    assert chat_data.first_sentence("Return x, i.e. the value.  More.\n\nDetails.") == "Return x, i.e. the value."
    assert chat_data.first_sentence("Split\n  a line") == "Split a line"


def test_stdlib_tasks_split_by_module():
    functions = chat_data.stdlib_functions(0.15)
    assert functions == chat_data.stdlib_functions(0.15) and len(functions) > 1000
    train_modules = {f.module for f in functions if not f.heldout}
    heldout_modules = {f.module for f in functions if f.heldout}
    assert heldout_modules and not train_modules & heldout_modules
    pairs = chat_data.stdlib_preferences(functions)
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    for item in chat_data.stdlib_multiple_choice([f for f in functions if f.heldout]):
        chat_data.check_choice(item)
        assert len(set(item["choices"])) == 4


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
        + "\n"
        + json.dumps({"prompt": "p"})
        + "\n"
    )
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not a valid conversations record"):
        chat_data.read_jsonl(str(path), "conversations")
    with pytest.raises(ConfigError, match="matches no file"):
        chat_data.read_jsonl(str(tmp_path / "none*.jsonl"), "preferences")
