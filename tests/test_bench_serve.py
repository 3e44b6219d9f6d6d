"""`python -m jaxllm.bench serve`: the percentile and summary arithmetic on hand-made timings; the load client
against a stub streaming server started here on 127.0.0.1 (exactly C in flight, every outcome counted: HTTP
errors, cut-off streams, timeouts, hang-ups, the deadline); the server lifecycle; and, slow, the command end to end
against jaxllm's server and transformers' own."""

import asyncio
import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from jaxllm.bench import load, serve, serve_report
from jaxllm.bench.load import Load, Outcome, percentile, summarize
from jaxllm.config import ConfigError


def test_percentile_interpolates_between_order_statistics():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0 and percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile([float(i) for i in range(101)], 99) == 99.0


def test_summary_counts_outcomes_and_rates_over_the_ok_requests():
    outcomes = [
        Outcome(0, "ok", ttft=0.1, gaps=[0.01, 0.03], content_chunks=3, usage_tokens=4),
        Outcome(1, "ok", ttft=0.3, gaps=[0.02], content_chunks=2),  # no usage chunk: its content chunks count
        Outcome(2, "ok", ttft=0.2, gaps=[], content_chunks=1, usage_tokens=1),
        Outcome(3, "failed", error="HTTP 500: boom"),
        Outcome(4, "disconnected", ttft=0.05, gaps=[9.0], content_chunks=2),  # not in the figures
        Outcome(5, "lost"),
        Outcome(6, "unsent"),
    ]
    s = summarize(outcomes, wall_s=2.0, concurrency=3)
    assert (s["requests"], s["ok"], s["failed"], s["disconnected"], s["lost"], s["unsent"]) == (7, 3, 1, 1, 1, 1)
    assert s["requests_per_s"] == 1.5 and s["output_tokens"] == 7 and s["output_tokens_per_s"] == 3.5
    assert s["tokens_per_request"] == pytest.approx(7 / 3)
    assert s["ttft_p50_s"] == 0.2 and s["ttft_p99_s"] == pytest.approx(0.298)
    assert s["itl_p50_s"] == 0.02 and s["itl_p99_s"] == pytest.approx(0.0298)
    assert s["errors"] == ["HTTP 500: boom"]


def test_stream_events_time_content_only():
    outcome = Outcome(0)
    role = {"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    assert not load._read_event(outcome, json.dumps(role), sent=0.0)
    assert outcome.ttft is None and outcome.content_chunks == 0
    for piece in ("a", "b"):
        load._read_event(outcome, json.dumps({"choices": [{"delta": {"content": piece}}]}), sent=0.0)
    load._read_event(outcome, json.dumps({"choices": [], "usage": {"completion_tokens": 5}}), sent=0.0)
    assert outcome.text == "ab" and len(outcome.gaps) == 1 and outcome.output_tokens == 5
    assert load._read_event(outcome, "[DONE]", sent=0.0) and outcome.done
    with pytest.raises(ValueError, match="finish_reason 'error'"):
        load._read_event(outcome, json.dumps({"choices": [{"delta": {}, "finish_reason": "error"}]}), sent=0.0)


def test_prompts_are_the_tasks_interleaved_and_fixed():
    drawn = load.prompts(12)
    assert drawn == load.prompts(12) and len(set(drawn)) == 12 and drawn[:6] == load.prompts(6)
    assert "+" in drawn[0] and drawn[4].startswith("reverse")  # add, count, multiply, python, reverse, sort


# ---------------------------------------------------------------------------------------------------------------
# A stub OpenAI streaming server: the k-th request to arrive (from 0) is answered by BEHAVIOURS[k % 5] unless the
# stub is told otherwise


class Stub:
    """HTTP/1.1 on 127.0.0.1 by asyncio alone: POST /v1/chat/completions streams `chunks` content chunks `delay`
    seconds apart, a usage chunk and [DONE]; it counts requests, the most in flight at once, and streams the client
    left before their end."""

    def __init__(self, chunks=4, delay=0.005, behaviours=("ok", "ok", "ok", "status", "cut")):
        self.chunks, self.delay, self.behaviours = chunks, delay, behaviours
        self.arrived = self.in_flight = self.most_in_flight = self.left = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def handle(self, reader, writer):
        try:
            while await self.one(reader, writer):
                pass
        except ConnectionError:  # writing to a client that went away
            self.left += 1
        finally:
            writer.close()

    async def one(self, reader, writer) -> bool:
        """Answers one request on a kept-alive connection; False when the connection is to close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:  # the client closed its kept-alive connection
            return False
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        json.loads(await reader.readexactly(length))
        behaviour = self.behaviours[self.arrived % len(self.behaviours)]
        self.arrived += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if behaviour == "status":
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom")
                await writer.drain()
                return True
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(self.chunks):
                await asyncio.sleep(self.delay if behaviour != "stall" else 60)
                await self.event(writer, {"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]})
                if behaviour == "cut" and i == 1:
                    return False  # closes the connection mid-body
            await self.event(writer, {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
            await self.event(writer, {"choices": [], "usage": {"completion_tokens": self.chunks}})
            if behaviour != "no_done":
                writer.write(self.chunk(b"data: [DONE]\n\n"))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        finally:
            self.in_flight -= 1

    @staticmethod
    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def event(self, writer, payload: dict) -> None:
        writer.write(self.chunk(f"data: {json.dumps(payload)}\n\n".encode()))
        await writer.drain()


def run_against(stub: Stub, level: Load, deadline_s: float = 30.0) -> dict:
    async def main():
        async with stub:
            loop_deadline = asyncio.get_running_loop().time()  # time.monotonic on Linux's default loop
            return await load.run_level(stub.port, "stub", level, loop_deadline + deadline_s)

    return asyncio.run(main())


def test_the_client_keeps_c_in_flight_and_counts_failures():
    stub = Stub()
    s = run_against(stub, Load(concurrency=3, requests=10, max_tokens=8))
    assert stub.arrived == 10 and stub.most_in_flight == 3
    assert (s["ok"], s["failed"], s["lost"], s["unsent"], s["disconnected"]) == (6, 4, 0, 0, 0)
    assert s["output_tokens"] == 6 * 4 and s["without_done"] == 0
    assert any(e.startswith("HTTP 500") for e in s["errors"]) and any("RemoteProtocolError" in e for e in s["errors"])
    assert s["texts"][0] == "t0t1t2t3" and s["ttft_p50_s"] > 0 and s["itl_p50_s"] > 0


def test_a_whole_body_without_done_is_ok_and_counted():
    s = run_against(Stub(behaviours=("no_done",)), Load(concurrency=2, requests=4))
    assert (s["ok"], s["failed"], s["without_done"]) == (4, 0, 4)


def test_hang_ups_are_disconnections_not_failures():
    stub = Stub(chunks=8, delay=0.01, behaviours=("ok",))
    s = run_against(stub, Load(concurrency=4, requests=8, max_tokens=16, disconnect=0.5, seed=3))
    assert s["hang_ups_planned"] == 4
    assert (s["ok"], s["disconnected"], s["failed"], s["lost"]) == (4, 4, 0, 0)
    assert stub.left == 4  # the stub saw each of them go mid-stream
    assert sorted(t is None for t in s["texts"]) == [False] * 4 + [True] * 4


def test_timeouts_fail_and_the_deadline_leaves_requests_lost_or_unsent():
    s = run_against(Stub(behaviours=("stall",)), Load(concurrency=2, requests=3, request_timeout_s=0.2))
    assert (s["failed"], s["ok"]) == (3, 0) and s["errors"] == ["timeout after 0.2 s"]
    s = run_against(Stub(behaviours=("stall",)), Load(concurrency=2, requests=5), deadline_s=0.3)
    assert (s["lost"], s["unsent"], s["failed"]) == (2, 3, 0) and s["wall_s"] < 5


# ---------------------------------------------------------------------------------------------------------------
# The server lifecycle, with a stand-in server process

HEALTH_SERVER = textwrap.dedent(
    """
    import http.server, json, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/health": {"status": "ok", "busy": 0, "queued": 0}, "/v1/models": {"data": [{"id": "m"}]}}
            data = json.dumps(body[self.path]).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    print("listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def test_a_server_is_waited_for_and_always_stopped(tmp_path):
    port = serve.free_port()
    server = serve.Server("stand-in", [sys.executable, "-c", HEALTH_SERVER, str(port)], port, tmp_path / "log")
    with server:
        server.wait_ready(30)
        assert server.model_id == "m" and server.health()["busy"] == 0 and server.resident_mib() > 1
        pid = server.process.pid
    assert server.process.poll() is not None and serve.resident_mib(pid) is None
    failing = serve.Server("broken", [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"], port,
                           tmp_path / "log2")  # fmt: skip
    with pytest.raises(ConfigError, match="broken server exited with 3:\nno model here"), failing:
        failing.wait_ready(30)


def test_settings_are_checked():
    bench = serve.bench_config({"run_dir": "r", "concurrency": "2,8"}, "")
    assert bench.levels == (2, 8) and bench.level_requests(2) == 8 and bench.level_requests(8) == 16
    for flags, match in (
        ({}, "needs --run_dir"),
        ({"run_dir": "r", "concurrency": "0,4"}, "concurrency levels >= 1"),
        ({"run_dir": "r", "max_tokens": "x"}, "not a number"),
        ({"run_dir": "r", "disconnect": "1.5"}, "from 0 to 1"),
    ):
        with pytest.raises(ConfigError, match=match):
            serve.bench_config(flags, "")
    with pytest.raises(ConfigError, match="--compare='vllm'"):
        serve.bench_config({"run_dir": "r"}, "vllm")


def test_the_table_names_every_level_and_the_ratios(tmp_path):
    def row(c, tokens_per_s):
        counts = {"concurrency": c, "requests": 8, "ok": 8, "failed": 0, "lost": 0, "unsent": 0}
        times = {"ttft_p50_s": 0.01, "ttft_p99_s": 0.02, "itl_p50_s": 0.001, "itl_p99_s": None}
        return counts | times | {"requests_per_s": 1.0, "output_tokens_per_s": tokens_per_s, "tokens_per_request": 8.0}

    result = {
        "model": "m",
        "settings": {"max_tokens": 8, "levels": [1, 16]},
        "servers": [
            {"server": "jaxllm", "levels": [row(1, 100.0), row(16, 800.0)], "soak": None},
            {"server": "transformers", "levels": [row(1, 50.0), row(16, 200.0)], "soak": None},
        ],
        "same_replies_at_1": [8, 8],
    }
    result["ratios"] = serve.ratios(result["servers"])
    table = serve_report.serve_table(result)
    assert "| jaxllm | 16 | 8/8 | 0 | 0 | 1.00 | 800 | 8.0 | 10 / 20 | 1 / - |" in table
    assert "16 streams over 1: 8.00" in table and "at 16 streams: 4.00" in table and "1 stream: 8/8" in table
    serve_report.plot(result, tmp_path / "serve.png")
    assert (tmp_path / "serve.png").stat().st_size > 1000


@pytest.mark.slow
def test_the_command_against_jaxllm_and_transformers(tiny_lineage, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "serve.json"
    run_dir = pathlib.Path(tiny_lineage["root"] / "sft")
    flags = ["--concurrency=1,2", "--requests=3", "--max_tokens=4", "--soak=6", "--soak_concurrency=3"]
    command = [sys.executable, "-m", "jaxllm.bench", "serve", f"--run_dir={run_dir}", *flags, "--compare=hf"]
    done = subprocess.run([*command, "--disconnect=0.5", f"--out={out}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    jaxllm, hf = result["servers"]
    for server in (jaxllm, hf):
        assert [r["ok"] for r in server["levels"]] == [3, 3], server
        assert server["soak"]["lost"] == server["soak"]["failed"] == server["soak"]["unsent"] == 0
    assert jaxllm["soak"]["busy_after"] == 0 and jaxllm["soak"]["queued_after"] == 0
    assert jaxllm["soak"]["rss_end_mib"] > 0 and result["ratios"]["jaxllm_16_over_1"] is None
    assert result["same_replies_at_1"][1] == 3 and (tmp_path / "serve.png").is_file()
    assert "| jaxllm | 2 | 3/3 |" in done.stdout and "soak (jaxllm): 6 requests" in done.stdout
