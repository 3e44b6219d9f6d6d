"""`python -m jaxllm.bench serve`: a load test of jaxllm's OpenAI-compatible server, and of transformers' own.

  python -m jaxllm.bench serve --run_dir=DIR [--concurrency=1,4,16,32] [--requests=N] [--max_tokens=64]
      [--compare=hf] [--soak=1000 --soak_concurrency=16 --disconnect=0.2] [--slots=N] [--deadline=900]

Each server runs as a subprocess on 127.0.0.1 (jaxllm: `python -m jaxllm.serve --run_dir=DIR`; with --compare=hf,
`transformers serve --continuous-batching` on the run exported by `python -m jaxllm.hf export`), one after the
other on the same cores, and is stopped (terminate, then kill) whatever happens. Against each: a warm-up of the
largest level, then every level of jaxllm.bench.load (C streams in flight until --requests finished; default
max(2 C, 8)), and with --soak=N, N requests of which a seeded fraction hang up mid-stream, after which /health
must show no busy or queued slots, with the server's resident memory before and after. --deadline (seconds per
server, from ready) stops everything still running; what it cut off is counted lost or unsent.

The export gets a generation_config.json that stops transformers where jaxllm stops (the chat template's <|end|>,
<eos>, <bos>): greedy replies of the same model are then the same length on both servers. Not a benchmark of
prompt-heavy loads (the prompts are the tasks' short questions) nor of anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from jaxllm.bench.load import HOST, Load, run_level
from jaxllm.config import ConfigError
from jaxllm.posttrain.chat_template import stop_ids
from jaxllm.train.checkpoint import load_run

HF_BLOCK_TOKENS = 32  # transformers' paged-cache block


@dataclasses.dataclass(frozen=True)
class ServeBench:
    run_dir: pathlib.Path
    levels: tuple[int, ...] = (1, 4, 16, 32)
    requests: int | None = None  # per level; None: max(2 C, 8)
    max_tokens: int = 64
    compare: str = ""
    soak: int = 0
    soak_concurrency: int = 16
    disconnect: float = 0.2
    seed: int = 0
    slots: int | None = None  # jaxllm.serve's --slots; None: its default
    deadline_s: float = 900.0
    request_timeout_s: float = 120.0
    startup_timeout_s: float = 600.0

    def level_requests(self, concurrency: int) -> int:
        return self.requests or max(2 * concurrency, 8)


def bench_config(flags: dict[str, str], compare: str) -> ServeBench:
    """The benchmark's settings from the command's flags, checked."""
    if "run_dir" not in flags:
        raise ConfigError("python -m jaxllm.bench serve needs --run_dir=DIR (a run with a checkpoint)")
    try:
        bench = ServeBench(
            run_dir=pathlib.Path(flags["run_dir"]),
            levels=tuple(int(c) for c in flags.get("concurrency", "1,4,16,32").split(",")),
            requests=int(flags["requests"]) if flags.get("requests") else None,
            max_tokens=int(flags.get("max_tokens", 64)),
            compare=compare,
            soak=int(flags.get("soak", 0)),
            soak_concurrency=int(flags.get("soak_concurrency", 16)),
            disconnect=float(flags.get("disconnect", 0.2)),
            seed=int(flags.get("seed", 0)),
            slots=int(flags["slots"]) if flags.get("slots") else None,
            deadline_s=float(flags.get("deadline", 900)),
            request_timeout_s=float(flags.get("request_timeout", 120)),
            startup_timeout_s=float(flags.get("startup_timeout", 600)),
        )
    except ValueError as e:
        raise ConfigError(f"python -m jaxllm.bench serve: a flag is not a number ({e})") from None
    if compare not in ("", "hf"):
        raise ConfigError(f"--compare={compare!r}: use --compare=hf, or leave it out for jaxllm alone")
    if min(bench.levels) < 1 or bench.max_tokens < 1 or (bench.requests or 1) < 1 or bench.soak < 0:
        raise ConfigError(
            f"--concurrency={flags.get('concurrency')}, --requests={bench.requests}, --max_tokens={bench.max_tokens}, "
            f"--soak={bench.soak}: need concurrency levels >= 1, requests >= 1, max_tokens >= 1 and soak >= 0"
        )
    if not 0 <= bench.disconnect <= 1:
        raise ConfigError(f"--disconnect={bench.disconnect}: a fraction of the soak's requests, from 0 to 1")
    return bench


# ---------------------------------------------------------------------------------------------------------------
# The servers under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def resident_mib(pid: int) -> float | None:
    """VmRSS of a process (MiB), from /proc; None where there is no /proc or the process is gone."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Server:
    """A server subprocess on 127.0.0.1: `with Server(name, command, port, log) as s:` waits for GET /health and
    the model id; leaving the block terminates it (then kills it after 20 s), however the block ends."""

    def __init__(self, name: str, command: list[str], port: int, log: pathlib.Path, model_id: str | None = None):
        self.name, self.command, self.port, self.log, self.model_id = name, command, port, log, model_id
        self.base = f"http://{HOST}:{port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until GET /health answered 200; raises ConfigError with the log's tail if the server exits or
        does not answer in time."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise ConfigError(f"{self.name} server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise ConfigError(f"{self.name} server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
        if self.model_id is None:
            self.model_id = httpx.get(f"{self.base}/v1/models", timeout=10).json()["data"][0]["id"]
        return time.monotonic() - start

    def health(self) -> dict:
        return httpx.get(f"{self.base}/health", timeout=10).json()

    def resident_mib(self) -> float | None:
        return resident_mib(self.process.pid)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def jaxllm_server(bench: ServeBench, work: pathlib.Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "jaxllm.serve", f"--run_dir={bench.run_dir}", f"--host={HOST}", f"--port={port}"]
    command += [f"--slots={bench.slots}"] if bench.slots else []
    return Server("jaxllm", command, port, work / "jaxllm-serve.log")


def export_for_hf(run_dir: pathlib.Path, out: pathlib.Path) -> int:
    """Exports the run with jaxllm's own exporter, and a generation_config.json that stops at jaxllm's stop ids;
    returns the model's context (tokens)."""
    command = [sys.executable, "-m", "jaxllm.hf", "export", f"--run_dir={run_dir}", f"--out={out}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"exporting {run_dir} for transformers failed:\n{done.stderr[-2000:]}")
    run = load_run(run_dir)
    t = run.tokenizer
    stops = {"bos_token_id": t.bos, "eos_token_id": list(stop_ids(t)), "pad_token_id": t.pad}
    (out / "generation_config.json").write_text(json.dumps(stops, indent=2))
    return run.cfg.model.block_size


def hf_server(bench: ServeBench, work: pathlib.Path) -> Server:
    hf_dir = work / "hf"
    context = export_for_hf(bench.run_dir, hf_dir)
    executable = shutil.which("transformers", path=str(pathlib.Path(sys.executable).parent)) or "transformers"
    port = free_port()
    # a paged KV cache for every stream of the largest level at the model's whole context, what jaxllm's slots
    # hold; left to itself, transformers sizes it by a fraction of all free memory (14 GB here for a 1M model)
    blocks = -(-max(bench.levels + (bench.soak_concurrency,)) * context // HF_BLOCK_TOKENS)
    cache = ["--cb-block-size", str(HF_BLOCK_TOKENS), "--cb-num-blocks", str(blocks)]
    command = [executable, "serve", "--continuous-batching", *cache, "--host", HOST, "--port", str(port), str(hf_dir)]
    # its /v1/models lists the hub cache, not the forced model: requests name the model by its path
    return Server("transformers", command, port, work / "hf-serve.log", model_id=str(hf_dir))


# ---------------------------------------------------------------------------------------------------------------
# The load against one server


def _level(server: Server, load: Load, deadline: float) -> dict:
    return asyncio.run(run_level(server.port, server.model_id, load, deadline))


def soak(server: Server, bench: ServeBench, deadline: float) -> dict:
    """bench.soak requests with hang-ups; then /health polled for up to 10 s until nothing is busy or queued."""
    rss_start = server.resident_mib()
    load = Load(bench.soak_concurrency, bench.soak, bench.max_tokens, bench.request_timeout_s, bench.disconnect)
    load = dataclasses.replace(load, seed=bench.seed)
    summary = _level(server, load, deadline)
    summary.pop("texts")
    settle = time.monotonic()
    health = server.health()
    while (health.get("busy") or health.get("queued")) and time.monotonic() - settle < 10:
        time.sleep(0.5)
        health = server.health()
    return summary | {
        "disconnect_fraction": bench.disconnect,
        "health_after": health,
        "busy_after": health.get("busy"),
        "queued_after": health.get("queued"),
        "rss_start_mib": rss_start,
        "rss_end_mib": server.resident_mib(),
    }


def measure(server: Server, bench: ServeBench) -> dict:
    """Starts the server, runs warm-up, every level and the soak against it, and stops it."""
    with server:
        ready_s = server.wait_ready(bench.startup_timeout_s)
        health_at_ready = server.health()
        print(f"{server.name}: ready in {ready_s:.1f} s, model {server.model_id!r}", flush=True)
        deadline = time.monotonic() + bench.deadline_s
        top = max(bench.levels)
        warmup = _level(server, Load(top, top, bench.max_tokens, bench.request_timeout_s), deadline)
        rss_loaded = server.resident_mib()
        levels = []
        for c in bench.levels:
            load = Load(c, bench.level_requests(c), bench.max_tokens, bench.request_timeout_s, seed=bench.seed)
            levels.append(_level(server, load, deadline))
            row = levels[-1]
            print(
                f"{server.name} C={c}: {row['ok']}/{row['requests']} ok, {row['output_tokens_per_s']:.0f} tok/s",
                flush=True,
            )
        soaked = soak(server, bench, deadline) if bench.soak else None
        # jaxllm.serve's own account of its start: the kernels and compute dtype it chose, its slots
        said = [line for line in server.log_tail(200).splitlines() if line.startswith("serve:")]
    texts = {row["concurrency"]: row.pop("texts") for row in levels}
    warmup.pop("texts")
    return {
        "server": server.name,
        "command": " ".join(server.command),
        "ready_s": ready_s,
        "health_at_ready": health_at_ready,
        "startup_log": said,
        "rss_loaded_mib": rss_loaded,
        "warmup": warmup,
        "levels": levels,
        "soak": soaked,
        "texts": texts,
    }


def _tokens_per_s(servers: list[dict], name: str, concurrency: int) -> float | None:
    server = next((s for s in servers if s["server"] == name), {"levels": []})
    return next((r["output_tokens_per_s"] for r in server["levels"] if r["concurrency"] == concurrency), None)


def ratios(servers: list[dict]) -> dict:
    """jaxllm's output tokens/s at 16 streams over 1, and over transformers' at 16 (None where one is missing)."""
    at = lambda name, c: _tokens_per_s(servers, name, c)
    ratio = lambda a, b: a / b if a and b else None
    return {
        "jaxllm_16_over_1": ratio(at("jaxllm", 16), at("jaxllm", 1)),
        "jaxllm_over_hf_16": ratio(at("jaxllm", 16), at("transformers", 16)),
    }


def bench_serve(bench: ServeBench, work: pathlib.Path | None = None) -> dict:
    """Every server's measurements, ratios, and how many greedy replies the servers agreed on at concurrency 1."""
    run = load_run(bench.run_dir)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = work or pathlib.Path(tmp)
        servers = [measure(jaxllm_server(bench, work), bench)]
        if bench.compare == "hf":
            servers.append(measure(hf_server(bench, work), bench))
    result = {
        "model": f"{run.cfg.model.family} {run.cfg.model.n_layer} x {run.cfg.model.n_embd}, vocab "
        f"{run.cfg.model.vocab_size}, run {bench.run_dir.resolve().name} step {run.step}",
        "settings": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in dataclasses.asdict(bench).items()},
        "servers": servers,
    }
    result["ratios"] = ratios(servers)
    if len(servers) == 2 and 1 in servers[0]["texts"]:
        pairs = list(zip(servers[0]["texts"][1], servers[1]["texts"][1]))
        result["same_replies_at_1"] = [sum(a is not None and a == b for a, b in pairs), len(pairs)]
    for s in servers:
        s.pop("texts")
    return result
