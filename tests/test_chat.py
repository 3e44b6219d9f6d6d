"""The chat REPL: every turn is prompted with the whole conversation (system turn included) through the chat
template, /reset forgets all but the system turn, /quit ends, and a greedy chat reply is the evaluation's reply."""

from __future__ import annotations

import io
import pathlib

from jaxllm import chat
from jaxllm.eval.suite import replies
from jaxllm.inference.generate import SamplingConfig, complete
from jaxllm.posttrain.chat_template import reply_prompt, stop_ids
from jaxllm.train.checkpoint import load_run

GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0)


def _expected(run, messages):
    prompt = reply_prompt(messages, run.tokenizer)
    return complete(run.graphdef, run.params, run.cfg.model, run.tokenizer, [prompt], GREEDY, stop_ids(run.tokenizer))[
        0
    ]


def test_repl_keeps_the_conversation_resets_and_quits(tiny_lineage):
    run = load_run(pathlib.Path(tiny_lineage["root"] / "sft"))
    system, first, second = "Answer with a number.", "What is 2 plus 3?", "What is 4 plus 1?"
    out = io.StringIO()
    chat.repl(run, GREEDY, system, io.StringIO(f"{first}\n{second}\n/reset\n{second}\n/quit\nnever read\n"), out)
    shown = out.getvalue().split("> ")[1:]  # one piece per prompt: its streamed reply
    a1 = _expected(run, [{"role": "system", "content": system}, {"role": "user", "content": first}])
    history = [
        {"role": "system", "content": system},
        {"role": "user", "content": first},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": second},
    ]
    a2 = _expected(run, history)
    fresh = _expected(run, [{"role": "system", "content": system}, {"role": "user", "content": second}])
    assert shown[0] == a1 + "\n" and shown[1] == a2 + "\n"
    assert shown[2] == "(conversation reset)\n" and shown[3] == fresh + "\n"
    assert len(shown) == 5 and shown[4] == ""  # /quit: nothing after it is read


def test_a_greedy_chat_reply_is_the_evaluations_reply(tiny_lineage):
    run = load_run(pathlib.Path(tiny_lineage["root"] / "sft"))
    questions = ["What is 1 plus 1?", "What is 7 plus 2?", "What is 9 plus 0?"]
    evaluated = replies(run, questions, GREEDY.max_new_tokens)
    chatted = [chat.reply(run, [{"role": "user", "content": q}], GREEDY, io.StringIO()) for q in questions]
    assert chatted == evaluated
