"""Benchmark results as files: JSON with where and when they were measured, and the generated table of them all.

Every result carries its provenance (CPU or accelerator model and flags, library versions, date, commit), and
`benchmarks/README.md` is regenerated from every JSON file in `benchmarks/results/` after each run, so the tables
people read are the files the benchmark wrote.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import pathlib
import platform
import subprocess

import jax

from jaxllm import machine
from jaxllm.bench.budget import budget_table
from jaxllm.bench.data_report import data_table
from jaxllm.bench.dedup import dedup_table
from jaxllm.bench.resilience import resilience_table
from jaxllm.bench.serve_report import serve_table
from jaxllm.bench.storage import storage_table

RESULTS = pathlib.Path("benchmarks/results")
TABLE = pathlib.Path("benchmarks/README.md")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str:
    """The checkout's commit, '+dirty' when it has uncommitted changes, or 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance() -> dict:
    device = jax.devices()[0]
    return {
        "machine": machine.describe(),
        "cpu_model": machine.cpu_model(),
        "cpu_flags": machine.cpu_flags(),
        "device": f"{len(jax.devices())} x {device.device_kind}",
        "python": platform.python_version(),
        "versions": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
    }


def default_path(command: str) -> pathlib.Path:
    """benchmarks/results/<command>-<machine tag>.json: the latest run of a command on this kind of machine."""
    return RESULTS / f"{command}-{machine.tag()}.json"


def train_table(result: dict) -> str:
    lines = [
        f"model {result['model']}; chosen: {result['choice']}",
        "",
        "| impl | kernels | compute | tokens/s | vs transformers f32 | MFU |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mark = " (auto)" if r.get("auto") else ""
        lines.append(
            f"| {r['impl']} | {r['kernels']}{mark} | {r['dtype']} | {r['tokens_per_s']:,.0f} | "
            f"{r['ratio']:.2f} | {100 * r['mfu']:.1f}% |"
        )
    lines.append(
        "\nmatmul peak (GFLOP/s): "
        + ", ".join(
            f"{dt} " + " / ".join(f"{k} {v / 1e9:,.0f}" for k, v in p.items()) for dt, p in result["peak_flops"].items()
        )
    )
    lines.append(
        "\ncompile time of the train step: "
        + ", ".join(f"{r['n_layer']} layers {r['compile_s']:.1f} s" for r in result["compile"])
    )
    return "\n".join(lines)


def generate_table(result: dict) -> str:
    lines = [
        f"model {result['model']}; {result['prompt_tokens']} prompt tokens, {result['new_tokens']} new "
        f"(greedy); chosen: {result['choice']}",
        "",
        "| impl | kernels | compute | batch | tokens/s | ms/step | vs transformers f32 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mark = " (auto)" if r.get("auto") else ""
        lines.append(
            f"| {r['impl']} | {r['kernels']}{mark} | {r['dtype']} | {r['batch']} | {r['tokens_per_s']:,.0f} "
            f"| {r['ms_per_step']:.1f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def speedrun_table(result: dict) -> str:
    reached = result["reached"]
    return f"`{result['command']}`\n\n" + (
        f"val_loss {reached['val_loss']:.4f} <= {result['target']} at step {reached['step']}, "
        f"{reached['wall_s']:.1f} s from process start"
        if reached
        else f"target {result['target']} not reached; best {min(e['val_loss'] for e in result['evals']):.4f}"
    )


TABLES = {
    "train": train_table,
    "generate": generate_table,
    "speedrun": speedrun_table,
    "budget": budget_table,
    "serve": serve_table,
    "dedup": dedup_table,
    "data": data_table,
    "resilience": resilience_table,
    "storage": storage_table,
}


def write(command: str, result: dict, out: pathlib.Path) -> None:
    """Writes the result (with its provenance) to `out` and, when it lies in RESULTS, regenerates TABLE."""
    result = {"benchmark": command, "provenance": provenance(), **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    if out.resolve().parent == RESULTS.resolve():
        write_table()


def write_table() -> None:
    sections = [
        "# Benchmark results",
        "",
        "Generated by `python -m jaxllm.bench` from the JSON files in `results/`: do not edit by hand. Each "
        "section names the machine, versions, date and commit it was measured on; every figure is a median "
        "over interleaved rounds in one process (see each file's `rounds`).",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        p = result["provenance"]
        versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
        sections += [
            "",
            f"## {result['benchmark']} on {p['machine']}",
            "",
            f"{p['device']}; Python {p['python']}, {versions}; {p['date']}, commit {p['commit']}; "
            f"file `results/{path.name}`",
            "",
            TABLES[result["benchmark"]](result),
        ]
    TABLE.write_text("\n".join(sections) + "\n")
