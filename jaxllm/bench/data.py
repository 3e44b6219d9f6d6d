"""`python -m jaxllm.bench data [--source=site-packages:100] [--rounds=3] [--datatrove=VENV]`: the data pipeline's
throughput in megabytes of input per second per core, local and Ray engines with 1 and 2 workers, the time of each
stage of the driver, and (with --datatrove) jaxllm's cleaning against datatrove's equivalent filters.

Each run is a fresh process pinned to as many CPUs as it has workers (CPUs 0..workers-1, inherited by its local
workers and by the Ray cluster it starts), preparing `--source` with base's settings (vocab_size VOCAB) into an
empty cache directory: what a first preparation costs, start-up included. Configurations are interleaved round by
round, since the machine may be shared, and each round's ratio of 2 workers to 1 is kept, so their range shows
the noise. Stage times are the driver's exclusive wall times (stage_clock.StageClock over the functions in
STAGES): the engine's stages are where the workers run in parallel, the rest is the serial share (Amdahl).

The comparison runs both tools over the same JSONL files (COMPARE_SHARDS of them: datatrove gives one task a file)
made from `--compare_source` (default stdlib-prose: the standard library's docstrings and language reference,
English prose): jaxllm cleans them with langid and dedup off (datatrove's language filter needs a downloaded
model; its dedup is a separate multi-stage pipeline), datatrove runs the filters of datatrove_stages.py, each in a
process pinned like the runs above, in datatrove's own virtual environment (it is not a dependency of jaxllm).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from jaxllm.bench.stage_clock import StageClock
from jaxllm.config import ConfigError, parse_cli
from jaxllm.config.clean import CleanConfig
from jaxllm.data import pipeline, prepare, shards, units
from jaxllm.data.sources import SourceStats, check_sources, iter_documents

CONFIGS = (("local", 1), ("local", 2), ("ray", 1), ("ray", 2))
VOCAB = 4096  # base's 512 is fewer than the distinct characters sentencepiece must cover in site-packages
# (owner, function, stage) as the driver's main thread meets them; "other" is the wall time none of them took. The
# cleaning report is drawn in a thread while the splits are tokenised (prepare._build_on): its time is in the
# engine's stage, as its drawing overlaps the workers'.
STAGES = (
    (prepare, "cache_key", "fingerprint inputs"),
    (prepare, "iter_documents", "read sources"),
    (pipeline, "_clean_chunks", "clean (engine)"),
    (units, "wait_for_writes", "publish units"),  # the driver's wait for its writer thread
    (pipeline, "_decide", "dedup decision"),
    (pipeline, "_dedup_pass", "dedup pass"),
    (prepare, "_tokenizer", "train tokenizer"),
    (prepare, "_encode_split", "tokenise (engine)"),
    (shards, "write_split", "write shards"),
    (pipeline.LocalPool, "close", "engine start/stop"),
)
ENGINE_STAGES = ("clean (engine)", "tokenise (engine)")
COMPARE_SHARDS = 16


def _pin(workers: int) -> None:
    if len(os.sched_getaffinity(0)) < workers:
        raise ConfigError(f"{workers} workers need {workers} CPUs; this process may use {os.sched_getaffinity(0)}")
    os.sched_setaffinity(0, set(range(workers)))


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _prepare_once(spec: dict) -> dict:
    clock = StageClock()
    for owner, name, stage in STAGES:
        clock.wrap(owner, name, stage)
    if spec["engine"] == "ray":
        import ray  # noqa: PLC0415 (the ray extra, needed by Ray runs only)

        clock.wrap(ray, "init", "engine start/stop")
        clock.wrap(ray, "shutdown", "engine start/stop")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as cache:
        cfg, _ = parse_cli(
            [
                "--experiment=base",
                f"--data.sources={json.dumps([spec['source']])}",
                f"--data.engine={spec['engine']}",
                f"--data.workers={spec['workers']}",
                f"--data.cache_dir={cache}",
                f"--model.vocab_size={VOCAB}",
            ],
            allowed_flags=(),
        )
        start, cpu = time.perf_counter(), _cpu_seconds()
        prepared = prepare.prepare(cfg, progress=False)
        wall = time.perf_counter() - start
        cleaning = json.loads((prepared.dir / "report.json").read_text())
    return {
        "wall_s": wall,
        "cpu_s": _cpu_seconds() - cpu,
        "bytes_in": cleaning["stages"]["normalize"]["bytes_in"],
        "documents_in": cleaning["stages"]["normalize"]["docs_in"],
        "stages": dict(clock.seconds) | {"other": wall - sum(clock.seconds.values())},
    }


def _clean_once(spec: dict) -> dict:
    """jaxllm's side of the comparison: the cleaning stages alone (langid and dedup off) over the JSONL shards."""
    cfg = CleanConfig()
    cfg = dataclasses.replace(
        cfg,
        langid=dataclasses.replace(cfg.langid, enabled=False),
        dedup=dataclasses.replace(cfg.dedup, exact=False, near=False),
    )
    docs = iter_documents((f"jsonl:{spec['input']}/*.jsonl:text",), SourceStats())
    start = time.perf_counter()
    with pipeline.local_engine(spec["workers"]) as engine:
        kept, cleaned = pipeline.clean_corpus(docs, cfg, spec["workers"], progress=False, engine=engine)
    return {
        "seconds": time.perf_counter() - start,
        "documents": cleaned.stages["normalize"].docs_in,
        "kept": len(kept),
    }


def child(spec_json: str) -> None:
    """One run, in a fresh process (`python -c`, so spawned workers import no main module): prints its JSON."""
    spec = json.loads(spec_json)
    _pin(spec["workers"])
    run = _prepare_once(spec) if spec["kind"] == "prepare" else _clean_once(spec)
    print(json.dumps(run))


def _run_child(spec: dict) -> dict:
    code = "import sys; from jaxllm.bench.data import child; child(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench data run {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _per_core(run: dict, workers: int) -> float:
    return run["bytes_in"] / 1e6 / run["wall_s"] / workers


def bench_throughput(source: str, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {f"{e} {w}": [] for e, w in CONFIGS}
    for r in range(rounds):
        for engine, workers in CONFIGS:
            run = _run_child({"kind": "prepare", "source": source, "engine": engine, "workers": workers})
            runs[f"{engine} {workers}"].append(run)
            print(
                f"[bench data] round {r + 1}/{rounds} {engine} x{workers}: {run['wall_s']:.1f} s, "
                f"{_per_core(run, workers):.2f} MB/s per core",
                flush=True,
            )
    rows = []
    for (engine, workers), key in zip(CONFIGS, runs):
        stages = {s: statistics.median(run["stages"].get(s, 0.0) for run in runs[key]) for s in runs[key][0]["stages"]}
        rows.append(
            {
                "engine": engine,
                "workers": workers,
                "mb_in": runs[key][0]["bytes_in"] / 1e6,
                "documents_in": runs[key][0]["documents_in"],
                "wall_s": _spread([run["wall_s"] for run in runs[key]]),
                # Ray's actors are not this run's children: their CPU time is not counted
                "cpu_s": _spread([run["cpu_s"] for run in runs[key]]) if engine == "local" else None,
                "cores_used": (
                    _spread([run["cpu_s"] / run["wall_s"] for run in runs[key]]) if engine == "local" else None
                ),
                "mb_per_s_per_core": _spread([_per_core(run, workers) for run in runs[key]]),
                "stages_s": stages,
                "serial_share": 1
                - sum(stages.get(s, 0.0) for s in ENGINE_STAGES)
                / statistics.median(run["wall_s"] for run in runs[key]),
            }
        )
    speedup = {
        engine: _spread([one["wall_s"] / two["wall_s"] for one, two in zip(runs[f"{engine} 1"], runs[f"{engine} 2"])])
        for engine in ("local", "ray")
    }
    # Amdahl: what 2 workers could reach at most, were the 1-worker run's engine stages halved and nothing else
    bound = {r["engine"]: 1 / (r["serial_share"] + (1 - r["serial_share"]) / 2) for r in rows if r["workers"] == 1}
    return {
        "source": source,
        "vocab_size": VOCAB,
        "rounds": rounds,
        "rows": rows,
        "speedup_2_over_1": speedup,
        "amdahl_bound_2_over_1": bound,
    }


def _write_shards(source: str, directory: pathlib.Path) -> int:
    """The documents of `source` as COMPARE_SHARDS JSONL files, dealt round-robin; returns their UTF-8 bytes."""
    directory.mkdir(parents=True)
    files = [open(directory / f"part-{k:02d}.jsonl", "w", encoding="utf-8") for k in range(COMPARE_SHARDS)]
    size = 0
    for i, doc in enumerate(iter_documents((source,), SourceStats())):
        files[i % COMPARE_SHARDS].write(json.dumps({"text": doc.text, "id": doc.id}) + "\n")
        size += len(doc.text.encode("utf-8"))
    for f in files:
        f.close()
    return size


def _run_datatrove(venv: pathlib.Path, shards_dir: pathlib.Path, workers: int) -> dict:
    script = pathlib.Path(__file__).with_name("datatrove_stages.py")
    cpus = ",".join(map(str, range(workers)))
    with tempfile.TemporaryDirectory(prefix="bench-datatrove-") as out:
        done = subprocess.run(
            [str(venv / "bin" / "python"), str(script), str(shards_dir), out, str(workers), cpus],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise RuntimeError(f"datatrove run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_datatrove(venv: pathlib.Path, source: str, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {f"{tool} {w}": [] for tool in ("jaxllm", "datatrove") for w in (1, 2)}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as work:
        shards_dir = pathlib.Path(work) / "jsonl"
        size = _write_shards(source, shards_dir)
        for r in range(rounds):
            for workers in (1, 2):
                runs[f"jaxllm {workers}"].append(
                    _run_child({"kind": "clean", "input": str(shards_dir), "workers": workers})
                )
                runs[f"datatrove {workers}"].append(_run_datatrove(venv, shards_dir, workers))
                print(
                    f"[bench data] compare round {r + 1}/{rounds} x{workers}: jaxllm "
                    f"{runs[f'jaxllm {workers}'][-1]['seconds']:.1f} s, datatrove "
                    f"{runs[f'datatrove {workers}'][-1]['seconds']:.1f} s",
                    flush=True,
                )
    rows = [
        {
            "tool": key.split()[0],
            "workers": int(key.split()[1]),
            "documents": runs[key][0]["documents"],
            "kept": runs[key][0]["kept"],
            "seconds": _spread([run["seconds"] for run in runs[key]]),
            "mb_per_s_per_core": _spread([size / 1e6 / run["seconds"] / int(key.split()[1]) for run in runs[key]]),
        }
        for key in runs
    ]
    ratio = {
        w: _spread([d["seconds"] / j["seconds"] for j, d in zip(runs[f"jaxllm {w}"], runs[f"datatrove {w}"])])
        for w in (1, 2)
    }
    return {
        "source": source,
        "mb": size / 1e6,
        "shards": COMPARE_SHARDS,
        "rounds": rounds,
        "rows": rows,
        "jaxllm_over_datatrove": ratio,
    }


def bench_data(flags: dict[str, str]) -> dict:
    """The command: its flags checked before any run (a bad one would fail only inside a child process)."""
    rounds, source, compare = flags.get("rounds", "3"), flags.get("source", "site-packages:100"), None
    if not rounds.isdigit() or int(rounds) < 1:
        raise ConfigError(f"--rounds={rounds!r}: expected a whole number >= 1, such as --rounds=3")
    check_sources((source,))
    venv = pathlib.Path(flags.get("datatrove", ""))
    if flags.get("datatrove"):
        if not (venv / "bin" / "python").is_file():
            raise ConfigError(f"--datatrove={venv}: no bin/python there; give a virtual environment with datatrove")
        compare = flags.get("compare_source", "stdlib-prose")
        check_sources((compare,))
    result = {"throughput": bench_throughput(source, int(rounds))}
    if compare:
        result["datatrove"] = bench_datatrove(venv, compare, int(rounds))
    return result
