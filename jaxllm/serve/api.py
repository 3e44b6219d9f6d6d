"""The OpenAI-compatible HTTP API over the engine (Starlette): chat and text completions, streamed as server-sent
events or whole, the model list, health, and the chat page at /.

Every bad request gets a 4xx JSON error in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) and
nothing else changes: a request holds an engine slot only while its client is there to read it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import pathlib
import secrets
import threading
import time
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from jaxllm.posttrain.chat_template import check_messages, reply_prompt, stop_ids
from jaxllm.serve.engine import Engine, QueueFull, Request
from jaxllm.serve.text import TextStream
from jaxllm.tokenizer import Tokenizer

PAGE = pathlib.Path(__file__).with_name("page.html")
SAMPLING_FIELDS = {"temperature", "top_p", "max_tokens", "stop", "seed", "n", "stream", "stream_options", "user"}
FIELDS = {
    "chat": {"model", "messages", "max_completion_tokens", *SAMPLING_FIELDS},
    "text": {"model", "prompt", *SAMPLING_FIELDS},
}
MAX_CHOICES = 8


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status)
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not ((low < value if low_open else low <= value) and value <= high)
    ):
        bound = f"{'(' if low_open else '['}{low}, {high}]"
        raise BadRequest(f"{name}={value!r}: must be a number in {bound}", name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name}={value!r}: must be an integer from {low} to {high}", name)
    return value


class Mailbox:
    """Hands events from the engine's thread to queues on the event loop, all those of one decoding step in one
    loop callback: a callback per token (call_soon_threadsafe wakes the loop through a pipe each time) costs more
    than the step itself at a few dozen streams."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def put(self, queue: asyncio.Queue, event) -> None:
        with self.lock:
            self.pending.append((queue, event))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            events, self.pending, self.scheduled = self.pending, collections.deque(), False
        for queue, event in events:
            queue.put_nowait(event)


class Server:
    """The API's state: the engine, the tokenizer, the model's name and the optional API key."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, model_id: str, api_key: str | None = None):
        self.engine, self.tokenizer, self.model_id, self.api_key = engine, tokenizer, model_id, api_key
        self.context = engine.cfg.block_size
        self.mailbox: Mailbox | None = None  # made on the server's event loop, by its first request

    # --- reading a request -------------------------------------------------------------------------------------
    async def _body(self, http: HTTPRequest, kind: str) -> dict:
        if self.api_key and http.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise BadRequest("missing or wrong API key: send the header 'Authorization: Bearer <key>'", status=401)
        try:
            body = json.loads(await http.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - FIELDS[kind])
        if unknown:
            raise BadRequest(
                f"unknown or unsupported field {unknown[0]!r}: this endpoint takes {', '.join(sorted(FIELDS[kind]))}",
                unknown[0],
            )
        if body.get("model") != self.model_id:
            raise BadRequest(
                f"model={body.get('model')!r}: this server serves {self.model_id!r}", "model", 404, "model_not_found"
            )
        return body

    def _prompt(self, body: dict, kind: str) -> tuple[list[int], tuple[int, ...]]:
        """The prompt's token ids and the ids a reply stops at."""
        if kind == "chat":
            try:
                check_messages(body.get("messages"))
            except ValueError as e:
                raise BadRequest(str(e), "messages") from None
            return reply_prompt(body["messages"], self.tokenizer), stop_ids(self.tokenizer)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest(f"prompt={prompt!r:.60}: must be a non-empty string", "prompt")
        return [self.tokenizer.bos, *self.tokenizer.encode(prompt)], (self.tokenizer.eos, self.tokenizer.bos)

    def _requests(self, body: dict, kind: str) -> tuple[list[dict], int]:
        """One engine request's settings per choice (n), checked; and the prompt's length."""
        prompt, stops = self._prompt(body, kind)
        room = self.context - len(prompt)
        if room < 1:
            raise BadRequest(
                f"the prompt is {len(prompt)} tokens: this model's context holds {self.context}, prompt and reply "
                "together; shorten it",
                "messages" if kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _integer(body, name, room, 1, 1 << 31)
        if max_tokens > room:
            raise BadRequest(
                f"{name}={max_tokens} with a prompt of {len(prompt)} tokens: the context holds {self.context}; "
                f"ask for at most {room}",
                name,
                code="context_length_exceeded",
            )
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
        n = _integer(body, "n", 1, 1, MAX_CHOICES)
        seed = _integer(body, "seed", None, -(1 << 63), (1 << 63) - 1)
        seed = secrets.randbits(31) if seed is None else seed % (1 << 31)
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        if stop is not None and not (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop)
        ):
            raise BadRequest(f"stop={body.get('stop')!r:.60}: a string or a list of up to 4 non-empty strings", "stop")
        if not isinstance(body.get("stream", False), bool):
            raise BadRequest(f"stream={body['stream']!r}: must be true or false", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise BadRequest(f"stream_options={options!r:.60}: only include_usage is supported", "stream_options")
        settings = dict(prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop_ids=stops)
        return [{**settings, "seed": (seed + i) % (1 << 31), "stop": tuple(stop or ())} for i in range(n)], len(prompt)

    # --- running it -----------------------------------------------------------------------------------------------
    def _start(self, choices: list[dict]) -> tuple[asyncio.Queue, list[Request]]:
        """Submits one engine request per choice; events (index, text piece | None, finish reason | None) arrive on
        the queue from the engine's thread."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        if self.mailbox is None or self.mailbox.loop is not loop:
            self.mailbox = Mailbox(loop)
        mailbox, requests = self.mailbox, []
        for index, c in enumerate(choices):
            text = TextStream(self.tokenizer, c.pop("stop"))
            put = lambda event: mailbox.put(events, event)

            def on_token(token, index=index, text=text, put=put):
                piece, stopped = text.push(token)
                if piece:
                    put((index, piece, None))
                return not stopped

            def on_finish(reason, index=index, text=text, put=put):
                put((index, text.flush() if reason == "length" else "", reason))

            requests.append(Request(on_token=on_token, on_finish=on_finish, **c))
        try:
            for r in requests:
                self.engine.submit(r)
        except QueueFull as e:
            for r in requests:
                self.engine.cancel(r)
            raise BadRequest(f"the server is busy ({e}); retry later", status=429, code="server_busy") from None
        return events, requests

    async def completion(self, http: HTTPRequest):
        kind = "chat" if http.url.path.endswith("/chat/completions") else "text"
        try:
            body = await self._body(http, kind)
            choices, prompt_tokens = self._requests(body, kind)
            events, requests = self._start(choices)
        except BadRequest as e:
            return _error(e.status, str(e), e.param, e.code)
        meta = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}",
            "created": int(time.time()),
            "model": self.model_id,
        }
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._stream(events, requests, kind, meta, prompt_tokens, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        texts, reasons = [""] * len(requests), [None] * len(requests)
        try:
            while None in reasons:
                index, piece, reason = await events.get()
                texts[index] += piece
                reasons[index] = reason or reasons[index]
        finally:
            for r in requests:
                self.engine.cancel(r)
        if "error" in reasons:
            return _error(500, "the engine failed while decoding this request; see the server's log")
        usage = self._usage(prompt_tokens, requests)
        if kind == "chat":
            out = [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f, "logprobs": None}
                for i, (t, f) in enumerate(zip(texts, reasons))
            ]
            return JSONResponse({**meta, "object": "chat.completion", "choices": out, "usage": usage})
        out = [
            {"index": i, "text": t, "finish_reason": f, "logprobs": None}
            for i, (t, f) in enumerate(zip(texts, reasons))
        ]
        return JSONResponse({**meta, "object": "text_completion", "choices": out, "usage": usage})

    @staticmethod
    def _usage(prompt_tokens: int, requests: list[Request]) -> dict:
        completion = sum(r.generated for r in requests)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    async def _stream(self, events, requests, kind, meta, prompt_tokens, include_usage) -> AsyncIterator[str]:
        """Server-sent events: a chunk per text piece, one with each choice's finish reason, usage if asked, [DONE].
        Leaving early (the client went away: Starlette closes this generator) cancels every choice."""
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(index, piece=None, reason=None, role=False):
            if kind == "chat":
                delta = {"role": "assistant", "content": ""} if role else ({} if piece is None else {"content": piece})
                choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
            else:
                choice = {"index": index, "text": piece or "", "finish_reason": reason, "logprobs": None}
            return f"data: {json.dumps({**meta, 'object': obj, 'choices': [choice]})}\n\n"

        try:
            if kind == "chat":
                for i in range(len(requests)):
                    yield chunk(i, role=True)
            left = len(requests)
            while left:
                ready = [await events.get()]
                while not events.empty():  # what arrived meanwhile goes out in one write
                    ready.append(events.get_nowait())
                out = []
                for index, piece, reason in ready:
                    if piece:
                        out.append(chunk(index, piece))
                    if reason is not None:
                        left -= 1
                        out.append(chunk(index, reason=reason if reason in ("stop", "length") else "error"))
                if out:
                    yield "".join(out)
            if include_usage:
                usage = self._usage(prompt_tokens, requests)
                yield f"data: {json.dumps({**meta, 'object': obj, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for r in requests:
                self.engine.cancel(r)

    # --- the rest -------------------------------------------------------------------------------------------------
    async def models(self, http: HTTPRequest):
        if self.api_key and http.headers.get("authorization", "") != f"Bearer {self.api_key}":
            return _error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": "jaxllm"}
        return JSONResponse({"object": "list", "data": [model]})

    async def health(self, http: HTTPRequest):
        return JSONResponse({"status": "ok", "model": self.model_id, "context": self.context, **self.engine.stats()})

    async def page(self, http: HTTPRequest):
        return HTMLResponse(PAGE.read_text())


async def _http_error(http: HTTPRequest, e: HTTPException):
    return _error(e.status_code, f"{http.method} {http.url.path}: {e.detail}")


async def _server_error(http: HTTPRequest, e: Exception):
    return _error(500, f"internal error ({type(e).__name__}); see the server's log")


def app(server: Server) -> Starlette:
    routes = [
        Route("/", server.page),
        Route("/health", server.health),
        Route("/v1/models", server.models),
        Route("/v1/chat/completions", server.completion, methods=["POST"]),
        Route("/v1/completions", server.completion, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
