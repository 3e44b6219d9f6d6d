"""jaxllm.serve: the OpenAI API against the official openai client, continuous batching against unbatched greedy
generation, and every bad input answered with a 4xx JSON error while the server keeps serving. The chat page has its
own tests in a real browser (tests/test_serve_page.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time

import httpx
import jax
import numpy as np
import openai
import pytest
import uvicorn
from flax import nnx

from jaxllm.inference.generate import SamplingConfig, complete, generate_tokens
from jaxllm.model.transformer import abstract_model
from jaxllm.posttrain.chat_template import reply_prompt, stop_ids
from jaxllm.serve.api import Mailbox, Server, app
from jaxllm.serve.engine import Engine, QueueFull, Request
from jaxllm.serve.text import TextStream
from jaxllm.train.checkpoint import load_run

QUESTIONS = ["What is 3 plus 4?", "What is 7 plus 1?", "What is 2 plus 5?", "What is 9 plus 0?"]


class Served:
    """An engine and uvicorn on a free 127.0.0.1 port, in this process (its own thread)."""

    def __init__(self, run, slots: int, max_queue: int = 16, api_key: str | None = None):
        self.run = run
        self.engine = Engine(run.graphdef, run.params, run.cfg.model, slots, max_queue)
        self.engine.start()
        self.server = Server(self.engine, run.tokenizer, "tiny", api_key)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.web = uvicorn.Server(uvicorn.Config(app(self.server), host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.web.run, daemon=True)
        self.thread.start()
        while not self.web.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.web.should_exit = True
        self.thread.join(10)
        self.engine.stop()


@pytest.fixture(scope="module")
def sft_run(tiny_lineage):
    return load_run(tiny_lineage["root"] / "sft")


@pytest.fixture(scope="module")
def served(sft_run):
    s = Served(sft_run, slots=3)
    yield s
    s.close()


def greedy_reply(run, question: str, max_tokens: int) -> str:
    prompt = reply_prompt([{"role": "user", "content": question}], run.tokenizer)
    sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=0.0)
    return complete(
        run.graphdef, run.params, run.cfg.model, run.tokenizer, [prompt], sampling, stop_ids(run.tokenizer)
    )[0]


def client(served, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, **kw)


def test_chat_completion_equals_unbatched_greedy_generation_streamed_or_not(served):
    c = client(served)
    for q in QUESTIONS[:2]:
        messages = [{"role": "user", "content": q}]
        whole = c.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10)
        assert whole.choices[0].message.content == greedy_reply(served.run, q, 10)
        assert whole.usage.prompt_tokens == len(reply_prompt(messages, served.run.tokenizer))
        assert whole.choices[0].finish_reason in ("stop", "length")
        chunks = list(
            c.chat.completions.create(
                model="tiny",
                messages=messages,
                temperature=0,
                max_tokens=10,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == whole.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason


def test_text_completions_models_and_health(served):
    c = client(served)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    out = c.completions.create(model="tiny", prompt="def ", temperature=0, max_tokens=8)
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.0)
    run = served.run
    assert (
        out.choices[0].text == complete(run.graphdef, run.params, run.cfg.model, run.tokenizer, ["def "], sampling)[0]
    )
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model="tiny", prompt="def ", temperature=0, max_tokens=8, stream=True)
    )
    assert streamed == out.choices[0].text
    health = httpx.get(served.url + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 3 and health["busy"] == 0 and health["context"] == 32


def test_n_seeded_samples_repeat_and_differ_by_choice(served):
    c = client(served)
    ask = lambda: c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[0]}], temperature=1.5, n=3, seed=7, max_tokens=8
    )
    first, again = ask(), ask()
    texts = [ch.message.content for ch in first.choices]
    assert texts == [ch.message.content for ch in again.choices]  # the seed decides, not the batch companions
    assert len(set(texts)) > 1
    assert first.usage.completion_tokens <= 3 * 8


def test_stop_strings_end_the_reply_before_them():
    class Chars:  # a tokenizer whose ids are characters
        decode = staticmethod(lambda ids: "".join(map(chr, ids)))

    text = TextStream(Chars(), ("END", "xy"))
    pieces = [text.push(ord(ch)) for ch in "abEN"]
    assert "".join(p for p, _ in pieces) == "ab" and not any(s for _, s in pieces)  # 'EN' held back
    assert text.push(ord("D")) == ("", True)
    other = TextStream(Chars(), ("END",))
    assert [other.push(ord(ch))[0] for ch in "aEx"] == ["a", "", "Ex"] and other.flush() == ""


BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"messages": [{"role": "user", "content": "hi"}], "wat": 1}, 400, "wat"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi " * 200}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 1e9}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 1000}, 400, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": "x"}, 400, "seed"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 400, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, 404, "model"),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(served, body, status, param):
    if isinstance(body, dict):
        body = json.dumps({"model": "tiny", **body}).encode()
    r = httpx.post(served.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["param"] == param
    assert httpx.get(served.url + "/health").json()["busy"] == 0


def test_unknown_routes_and_methods_are_json_errors(served):
    assert httpx.get(served.url + "/v1/nothing").status_code == 404
    r = httpx.get(served.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_a_client_leaving_mid_stream_frees_its_slot(served):
    body = {"model": "tiny", "messages": [{"role": "user", "content": QUESTIONS[1]}], "max_tokens": 12, "stream": True}
    for _ in range(3):
        with httpx.stream("POST", served.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first event, then hang up
    deadline = time.time() + 20
    while httpx.get(served.url + "/health").json()["busy"] and time.time() < deadline:
        time.sleep(0.05)
    assert (
        httpx.get(served.url + "/health").json() | {"busy": 0, "queued": 0} == httpx.get(served.url + "/health").json()
    )
    reply = client(served).chat.completions.create(model="tiny", messages=body["messages"], temperature=0, max_tokens=6)
    assert reply.choices[0].message.content == greedy_reply(served.run, QUESTIONS[1], 6)


def test_more_concurrent_requests_than_slots_all_finish_with_nothing_compiled(served, caplog):
    c = client(served)
    results = {}

    def ask(i):
        q = QUESTIONS[i % len(QUESTIONS)]
        reply = c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=8
        )
        results[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]  # 3 slots
    jax.config.update("jax_log_compiles", True)  # every shape was compiled when the engine started
    try:
        with caplog.at_level(logging.WARNING):
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
    finally:
        jax.config.update("jax_log_compiles", False)
    assert [results[i] for i in range(10)] == [greedy_reply(served.run, QUESTIONS[i % 4], 8) for i in range(10)]
    compiled = [r.getMessage() for r in caplog.records if "_prefill" in r.getMessage() or "_decode" in r.getMessage()]
    assert not compiled, compiled


def test_a_fresh_engine_compiles_nothing_after_warming_up(sft_run, caplog):
    """Its first request, into empty slots, at a prefill bucket other than the first (a state made at start
    differs from a step's output only in how it is placed, which a compiled function also keys on)."""
    engine = Engine(sft_run.graphdef, sft_run.params, sft_run.cfg.model, 2, 4)
    engine.start()
    finished = []
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            # the tiny model's buckets: its whole context (32) first, which warming up compiled for a step's output
            for length in (30, 3):
                done = threading.Event()
                request = Request(
                    [1] * length, 2, lambda token: True, lambda reason: (finished.append(reason), done.set())
                )
                engine.submit(request)
                assert done.wait(60)
    finally:
        jax.config.update("jax_log_compiles", False)
        engine.stop()
    assert finished == ["length"] * 2
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not compiled, compiled


def test_api_key_is_required_when_set(sft_run):
    s = Served(sft_run, slots=1, api_key="sesame")
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = httpx.post(s.url + "/v1/chat/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(s.url + "/v1/models", headers={"authorization": "Bearer nope"}).status_code == 401
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="sesame", max_retries=0)
        assert ok.chat.completions.create(**body).choices[0].message.content is not None
    finally:
        s.close()


def _tokens_until(engine, prompt, max_tokens, order, name):
    """Submits a request sampled at temperature 1 with seed 5; -> it and the list its tokens arrive in."""
    got = []
    on_token, on_finish = lambda t: got.append(t) or True, lambda reason: order.append((name, reason))
    request = Request(prompt, max_tokens, on_token, on_finish, temperature=1.0, seed=5)
    engine.submit(request)
    return request, got


def test_a_late_short_request_finishes_before_an_early_long_one_with_unbatched_outputs(sft_run, kernel_set):
    cfg = dataclasses.replace(sft_run.cfg.model, kernels=kernel_set)
    graphdef, params = nnx.graphdef(abstract_model(cfg)), sft_run.params
    engine = Engine(graphdef, params, cfg, slots=2, max_queue=1)
    engine.start()
    rng = np.random.default_rng(0)
    long_prompt, short_prompt = [int(t) for t in rng.integers(1, 512, 8)], [int(t) for t in rng.integers(1, 512, 4)]
    order = []
    try:
        long, long_tokens = _tokens_until(engine, long_prompt, 24, order, "long")
        while len(long_tokens) < 3:
            time.sleep(0.001)
        _, short_tokens = _tokens_until(engine, short_prompt, 8, order, "short")
        while not short_tokens:
            time.sleep(0.001)
        # the queue holds one: with both slots busy the next waits, the one after is refused
        _tokens_until(engine, short_prompt, 1, order, "queued")
        with pytest.raises(QueueFull):
            _tokens_until(engine, short_prompt, 1, order, "refused")
        deadline = time.time() + 60
        while len(order) < 3 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    assert [name for name, _ in order][:2] == ["short", "queued"] and order[2] == ("long", "length")
    for prompt, tokens in ((long_prompt, long_tokens), (short_prompt, short_tokens)):
        sampling = SamplingConfig(max_new_tokens=len(tokens), temperature=1.0)
        alone = [int(t[0]) for t in generate_tokens(graphdef, params, cfg, [prompt], sampling, (), jax.random.key(5))]
        assert tokens == alone
    assert len(set(long_tokens)) > 3  # the check compares varied tokens, not one repeated


def test_a_steps_events_reach_the_event_loop_in_one_callback_and_in_order():
    loop = asyncio.new_event_loop()
    callbacks = []
    wake = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda f, *args: (callbacks.append(f), wake(f, *args))
    queues = [asyncio.Queue(), asyncio.Queue()]
    mailbox = Mailbox(loop)
    step = threading.Thread(target=lambda: [mailbox.put(queues[i % 2], i) for i in range(6)])
    step.start()
    step.join()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert len(callbacks) == 1
    assert [[q.get_nowait() for _ in range(q.qsize())] for q in queues] == [[0, 2, 4], [1, 3, 5]]
