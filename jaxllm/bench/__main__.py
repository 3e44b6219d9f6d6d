"""`python -m jaxllm.bench {train,generate,speedrun,budget,serve,dedup,data,resilience,storage}`: jaxllm against
transformers on this machine, a speedrun, near dedup, the data pipeline's throughput (against datatrove), runs that
get preempted, and runs on failing object storage.

  python -m jaxllm.bench train --compare=hf [--experiment=base --model.*=...] [--steps=5] [--rounds=3] [--out=F.json]
  python -m jaxllm.bench generate --compare=hf [--experiment=base ...] [--new_tokens=64] [--rounds=3] [--out=F.json]
  python -m jaxllm.bench speedrun --data=PATH/tinyshakespeare.txt [--target=1.88]
  python -m jaxllm.bench budget [--budget=10m] [--fixed=base_fixed|none]   # planned vs fixed vs compressors
  python -m jaxllm.bench serve --run_dir=DIR [--compare=hf] [--concurrency=1,4,16,32] [--soak=1000]  # HTTP load
  python -m jaxllm.bench dedup [--pairs=3000] [--docs=1000000] [--workers=2]  # near dedup, driver memory
  python -m jaxllm.bench data [--source=site-packages:100] [--rounds=3] [--datatrove=VENV]  # MB/s per core
  python -m jaxllm.bench resilience [--trials_term=20] [--trials_kill=10] [--seed=0] [--rounds=3]  # preemption
  python -m jaxllm.bench storage [--steps=20] [--checkpoint_every=5] [--train.*=...]  # gs:// faults, emulated

Each prints its table, with the kernels and dtype `auto` chose here and why, and writes its result as JSON with
the machine, versions, date and commit (default benchmarks/results/<command>-<machine>.json, which also
regenerates benchmarks/README.md; serve and data also write their plot beside it, <out>.png). --compare=hf needs the dev
extra (torch, transformers), serve the dev extra's httpx.
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax

from jaxllm import machine
from jaxllm.bench import data_report, results, runs, serve_report
from jaxllm.bench.budget import bench_budget
from jaxllm.bench.data import bench_data
from jaxllm.bench.dedup import bench_dedup
from jaxllm.bench.resilience import bench_resilience, trial_counts
from jaxllm.bench.storage import bench_storage
from jaxllm.cli import run_main
from jaxllm.config import ConfigError, parse_cli

FLAGS = ("compare", "steps", "warmup", "rounds", "out", "new_tokens", "data", "target", "budget", "fixed")
COMMANDS = ("train", "generate", "speedrun", "budget", "serve", "dedup", "data", "resilience", "storage")
DEDUP_FLAGS = ("pairs", "docs", "workers")
RESILIENCE_FLAGS = ("trials_term", "trials_kill", "seed")
DATA_FLAGS = ("source", "datatrove", "compare_source")
# `serve`'s own flags (jaxllm.bench.serve.bench_config reads them)
SERVE_FLAGS = (
    "run_dir",
    "concurrency",
    "requests",
    "max_tokens",
    "soak",
    "soak_concurrency",
    "disconnect",
    "seed",
    "slots",
    "deadline",
    "request_timeout",
    "startup_timeout",
)


def main(argv: list[str]) -> int:
    # timed compilations compile: no programs loaded from disk, here or in the speedrun's process
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    jax.config.update("jax_enable_compilation_cache", False)
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(f"usage: python -m jaxllm.bench {{{','.join(COMMANDS)}}} [--compare=hf] [--key=value ...]")
    command, argv = argv[0], argv[1:]
    own = {
        "serve": SERVE_FLAGS,
        "resilience": RESILIENCE_FLAGS,
        "storage": ("checkpoint_every",),
        "data": DATA_FLAGS,
    }.get(command, ())
    cfg, flags = parse_cli(argv, allowed_flags=FLAGS + own + DEDUP_FLAGS)
    out = pathlib.Path(flags["out"]) if flags.get("out") else results.default_path(command)
    if command == "serve":
        result = _serve(flags, out)
    elif command == "dedup":
        result = bench_dedup(
            int(flags.get("pairs", 3000)), int(flags.get("docs", 1_000_000)), int(flags.get("workers", 2))
        )
    elif command == "data":
        result = bench_data(flags)
        out.parent.mkdir(parents=True, exist_ok=True)
        data_report.plot(result, out.with_suffix(".png"))
    elif command == "resilience":
        rounds = int(flags.get("rounds", 3))
        result = bench_resilience(*trial_counts(flags), rounds, pathlib.Path("runs/bench/resilience"))
    elif command == "storage":
        result = bench_storage(flags, [a for a in argv if "." in a.partition("=")[0]])
    elif command == "budget":
        overrides = [a for a in argv if "." in a.partition("=")[0]]  # passed on to both training runs
        result = bench_budget(
            flags.get("budget", "10m"), flags.get("fixed", "base_fixed"), pathlib.Path("runs/bench/budget"), overrides
        )
    elif command == "speedrun":
        data = pathlib.Path(flags.get("data", "../shared/data/tinyshakespeare.txt"))
        result = runs.speedrun(data, float(flags.get("target", 1.88)), pathlib.Path("runs/bench/speedrun_run"))
    else:
        compare = flags.get("compare", "")
        runs.setup_torch(compare)
        warmup, steps, rounds = int(flags.get("warmup", 2)), int(flags.get("steps", 5)), int(flags.get("rounds", 3))
        if command == "train":
            result = runs.bench_train(cfg, compare, steps, warmup, rounds)
        else:
            result = runs.bench_generate(cfg, compare, int(flags.get("new_tokens", 64)), max(warmup, 1), rounds)
    print(f"on {machine.describe()}")
    print(results.TABLES[command](result))
    results.write(command, result, out)
    print(f"\nwrote {out}" + (f" and {out.with_suffix('.png')}" if command in ("serve", "data") else ""))
    return 0


def _serve(flags: dict[str, str], out: pathlib.Path) -> dict:
    try:
        from jaxllm.bench import serve  # noqa: PLC0415 (httpx, from the dev extra: needed by this command only)
    except ImportError:
        raise ConfigError("python -m jaxllm.bench serve needs httpx: pip install -e '.[dev]'") from None
    compare = flags.get("compare", "")
    bench = serve.bench_config(flags, compare)
    if compare:
        runs.setup_torch(compare)  # is transformers installed? (transformers serve runs in its own process)
    result = serve.bench_serve(bench)
    out.parent.mkdir(parents=True, exist_ok=True)
    serve_report.plot(result, out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
