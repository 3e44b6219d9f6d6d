"""A bounded load client for OpenAI-compatible chat servers: streaming requests at a fixed concurrency, timed.

For `python -m jaxllm.bench serve` (jaxllm.bench.serve starts the servers): `run_level` keeps exactly C streaming
`POST /v1/chat/completions` requests in flight until `requests` of them have finished, and `summarize` turns what
each one measured into one level's figures. Every request has its own timeout and the whole level a deadline: the
client always stops. Not a general HTTP load tool (no retries, no ramp-up, one endpoint), and it talks to
127.0.0.1 only.

Per request: time to first token (the first chunk whose delta has non-empty content), the gaps between content
chunks, output tokens (the usage chunk's completion_tokens, else the number of content chunks), and its outcome:
  ok            200, and the stream ended with [DONE], or whole (HTTP's own end of the body) after the choice's
                finish reason: transformers serve sends no [DONE] (`without_done` counts those)
  failed        a status other than 200, a broken stream (cut off mid-body, ended before a finish reason,
                unreadable JSON, an 'error' finish reason) or the request's timeout
  disconnected  the client left mid-stream on purpose (the soak's clients that hang up)
  lost          sent, and still unfinished when the level's deadline stopped it
  unsent        not yet sent when the deadline came
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time

import httpx

from jaxllm.posttrain import tasks

HOST = "127.0.0.1"


@dataclasses.dataclass
class Outcome:
    """What one request measured; times are seconds from the moment it was sent."""

    index: int
    status: str = "unsent"  # ok | failed | disconnected | lost | unsent
    error: str = ""
    ttft: float | None = None
    gaps: list[float] = dataclasses.field(default_factory=list)  # between consecutive content chunks
    last_content: float | None = None
    content_chunks: int = 0
    finished: bool = False  # a finish reason arrived
    done: bool = False  # [DONE] arrived
    usage_tokens: int | None = None
    text: str = ""

    @property
    def output_tokens(self) -> int:
        return self.content_chunks if self.usage_tokens is None else self.usage_tokens


@dataclasses.dataclass(frozen=True)
class Load:
    """One level's load: `requests` chat requests, `concurrency` in flight, each asking for `max_tokens` greedy
    tokens; a `disconnect` fraction of them (a seeded draw) hang up after 1 to max_tokens / 8 content chunks."""

    concurrency: int
    requests: int
    max_tokens: int = 64
    request_timeout_s: float = 120.0
    disconnect: float = 0.0
    seed: int = 0


def prompts(n: int) -> list[str]:
    """n user messages from the embedded verifiable tasks, the tasks interleaved, the same ones every time."""
    names = sorted(tasks.EMBEDDED)
    drawn = {name: tasks.embedded(name, -(-n // len(names))) for name in names}
    return [drawn[names[i % len(names)]][i // len(names)].prompt for i in range(n)]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default); None for
    no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def summarize(outcomes: list[Outcome], wall_s: float, concurrency: int) -> dict:
    """One level's figures: requests/s and output tokens/s counted over the ok requests and the level's wall time;
    TTFT and inter-token latency percentiles over the ok requests (the gaps of all of them pooled)."""
    ok = [o for o in outcomes if o.status == "ok"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "failed", "disconnected", "lost", "unsent")}
    ttfts = [o.ttft for o in ok if o.ttft is not None]
    gaps = [g for o in ok for g in o.gaps]
    tokens = sum(o.output_tokens for o in ok)
    return {
        "concurrency": concurrency,
        "requests": len(outcomes),
        **counts,
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "tokens_per_request": tokens / len(ok) if ok else 0.0,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "itl_p50_s": percentile(gaps, 50),
        "itl_p99_s": percentile(gaps, 99),
        "without_done": sum(o.status == "ok" and not o.done for o in outcomes),
        "errors": sorted({o.error for o in outcomes if o.error})[:5],
    }


def _body(model: str, prompt: str, max_tokens: int) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
    }


def _read_event(outcome: Outcome, data: str, sent: float) -> bool:
    """Records one `data:` payload of the stream; True at [DONE]. Raises ValueError on a broken chunk."""
    if data == "[DONE]":
        outcome.done = True
        return True
    chunk = json.loads(data)
    if chunk.get("usage"):
        outcome.usage_tokens = int(chunk["usage"]["completion_tokens"])
    for choice in chunk.get("choices") or []:
        if choice.get("finish_reason") == "error":
            raise ValueError("the server ended the reply with finish_reason 'error'")
        outcome.finished = outcome.finished or bool(choice.get("finish_reason"))
        content = (choice.get("delta") or {}).get("content")
        if content:
            now = time.perf_counter() - sent
            if outcome.last_content is None:
                outcome.ttft = now
            else:
                outcome.gaps.append(now - outcome.last_content)
            outcome.last_content = now
            outcome.content_chunks += 1
            outcome.text += content
    return False


async def _stream(client: httpx.AsyncClient, url: str, body: dict, outcome: Outcome, hang_up_after: int | None):
    sent = time.perf_counter()
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            outcome.status, outcome.error = "failed", f"HTTP {response.status_code}: {text[:120]}"
            return
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            if _read_event(outcome, line[5:].strip(), sent):
                outcome.status = "ok"
                return
            if hang_up_after is not None and outcome.content_chunks >= hang_up_after:
                outcome.status = "disconnected"  # leaving the block closes the connection mid-stream
                return
    if outcome.finished:  # the body ended whole after the finish reason, without [DONE]
        outcome.status = "ok"
    else:
        outcome.status, outcome.error = "failed", "broken stream: ended before a finish reason"


async def one_request(client, url, body, outcome: Outcome, timeout_s: float, hang_up_after: int | None) -> None:
    """Runs one streaming request into `outcome`; its failures are recorded there, never raised (it stays 'lost'
    when cancelled)."""
    outcome.status = "lost"
    try:
        async with asyncio.timeout(timeout_s):
            await _stream(client, url, body, outcome, hang_up_after)
    except TimeoutError:
        outcome.status, outcome.error = "failed", f"timeout after {timeout_s:g} s"
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        outcome.status, outcome.error = "failed", f"broken stream: {type(e).__name__}: {str(e)[:100]}"
    except Exception as e:  # anything else fails this request, not the worker that would send the next
        outcome.status, outcome.error = "failed", f"client error: {type(e).__name__}: {str(e)[:100]}"


async def run_level(port: int, model: str, load: Load, deadline: float) -> dict:
    """Runs one level against http://127.0.0.1:port until every request finished or time.monotonic() passes
    `deadline`; its summary (jaxllm.bench.load.summarize) with each request's text under 'texts'."""
    url = f"http://{HOST}:{port}/v1/chat/completions"
    rng = random.Random(load.seed)
    hanging = set(rng.sample(range(load.requests), round(load.disconnect * load.requests)))
    hang_ups = [rng.randint(1, max(1, load.max_tokens // 8)) if i in hanging else None for i in range(load.requests)]
    messages = prompts(load.requests)
    outcomes = [Outcome(i) for i in range(load.requests)]
    next_index = iter(range(load.requests))
    limits = httpx.Limits(max_connections=load.concurrency, max_keepalive_connections=load.concurrency)

    async def worker(client):
        for i in next_index:  # a shared iterator: each index is taken by exactly one worker
            body = _body(model, messages[i], load.max_tokens)
            await one_request(client, url, body, outcomes[i], load.request_timeout_s, hang_ups[i])

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(load.request_timeout_s), limits=limits) as client:
        workers = [asyncio.create_task(worker(client)) for _ in range(load.concurrency)]
        _, pending = await asyncio.wait(workers, timeout=max(0.0, deadline - time.monotonic()))
        for task in pending:  # the deadline: requests still in flight stay 'lost'
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    summary = summarize(outcomes, time.perf_counter() - start, load.concurrency)
    texts = [o.text if o.status == "ok" else None for o in outcomes]
    return summary | {"hang_ups_planned": len(hanging), "texts": texts}
