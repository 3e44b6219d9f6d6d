"""`python -m jaxllm.bench {train,generate,speedrun}`: jaxllm against transformers on this machine, and a speedrun.

  python -m jaxllm.bench train --compare=hf [--experiment=base --model.*=...] [--steps=5] [--rounds=3] [--out=F.json]
  python -m jaxllm.bench generate --compare=hf [--experiment=base ...] [--new_tokens=64] [--rounds=3] [--out=F.json]
  python -m jaxllm.bench speedrun --data=PATH/tinyshakespeare.txt [--target=1.88]
  python -m jaxllm.bench budget [--budget=10m] [--fixed=base_fixed|none]   # planned vs fixed vs compressors

Each prints its table, with the kernels and dtype `auto` chose here and why, and writes its result as JSON with
the machine, versions, date and commit (default benchmarks/results/<command>-<machine>.json, which also
regenerates benchmarks/README.md). --compare=hf needs the dev extra (torch, transformers).
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax

from jaxllm import machine
from jaxllm.bench import results, runs
from jaxllm.bench.budget import bench_budget
from jaxllm.cli import run_main
from jaxllm.config import ConfigError, parse_cli

FLAGS = ("compare", "steps", "warmup", "rounds", "out", "new_tokens", "data", "target", "budget", "fixed")
COMMANDS = ("train", "generate", "speedrun", "budget")


def main(argv: list[str]) -> int:
    # timed compilations compile: no programs loaded from disk, here or in the speedrun's process
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    jax.config.update("jax_enable_compilation_cache", False)
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(
            "usage: python -m jaxllm.bench {train,generate,speedrun,budget} [--compare=hf] [--key=value ...]"
        )
    command, argv = argv[0], argv[1:]
    cfg, flags = parse_cli(argv, allowed_flags=FLAGS)
    out = pathlib.Path(flags["out"]) if flags.get("out") else results.default_path(command)
    if command == "budget":
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
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
