"""The tables and plot of `python -m jaxllm.bench data` (jaxllm.bench.data measures): apart from the measuring, so
that jaxllm.bench.results regenerates the tables without importing the data pipeline."""

from __future__ import annotations

import pathlib

from jaxllm.plots import plt, save_figure


def _range(spread: dict, fmt: str = ".2f") -> str:
    return f"{spread['median']:{fmt}} ({spread['min']:{fmt}}-{spread['max']:{fmt}})"


def _throughput_table(t: dict) -> list[str]:
    rows = t["rows"]
    stages = list(rows[0]["stages_s"])
    lines = [
        f"whole preparation (`python -m jaxllm.data`, base's settings, vocab {t['vocab_size']}) of `{t['source']}`: "
        f"{rows[0]['mb_in']:.1f} MB, {rows[0]['documents_in']:,} documents; each run a fresh process pinned to as "
        f"many CPUs as workers; median (min-max) of {t['rounds']} interleaved rounds",
        "",
        "| engine | workers | wall s | MB/s per core | CPU s (local) | cores used (local) | serial share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['engine']} | {r['workers']} | {_range(r['wall_s'], '.1f')} | {_range(r['mb_per_s_per_core'])} | "
        f"{_range(r['cpu_s'], '.1f') if r['cpu_s'] else '-'} | {_range(r['cores_used']) if r['cores_used'] else '-'} "
        f"| {100 * r['serial_share']:.0f}% |"
        for r in rows
    ]
    speedup, bound = t["speedup_2_over_1"], t["amdahl_bound_2_over_1"]
    lines += [
        "",
        "2 workers over 1 (per round): "
        + ", ".join(f"{e} {_range(s)}x" for e, s in speedup.items())
        + "; at most (Amdahl, from the 1-worker run's serial share): "
        + ", ".join(f"{e} {b:.2f}x" for e, b in bound.items()),
        "",
        "driver's wall time per stage, s (median; the engine stages are the parallel part):",
        "",
        "| stage | " + " | ".join(f"{r['engine']} {r['workers']}" for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    lines += [f"| {s} | " + " | ".join(f"{r['stages_s'].get(s, 0.0):.2f}" for r in rows) + " |" for s in stages]
    return lines


def _datatrove_table(d: dict) -> list[str]:
    lines = [
        f"cleaning only, the same {d['shards']} JSONL files of `{d['source']}` ({d['mb']:.1f} MB): jaxllm's "
        "normalise, Gopher repetition and quality, C4, FineWeb, PII (langid and dedup off) against datatrove's "
        "Gopher repetition and quality, C4 quality, FineWeb quality and PII formatter (its language filter and "
        "C4 bad words need downloads); median (min-max) of "
        f"{d['rounds']} interleaved rounds",
        "",
        "| tool | workers | documents kept | seconds | MB/s per core |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['tool']} | {r['workers']} | {r['kept']:,} of {r['documents']:,} | {_range(r['seconds'], '.1f')} | "
        f"{_range(r['mb_per_s_per_core'])} |"
        for r in d["rows"]
    ]
    lines += [
        "",
        "jaxllm's speed over datatrove's: "
        + ", ".join(
            f"{w} worker{'s' if int(w) > 1 else ''} {_range(s, '.1f')}x" for w, s in d["jaxllm_over_datatrove"].items()
        ),
    ]
    return lines


def data_table(result: dict) -> str:
    lines = _throughput_table(result["throughput"])
    if "datatrove" in result:
        lines += [""] + _datatrove_table(result["datatrove"])
    return "\n".join(lines)


def plot(result: dict, out: pathlib.Path) -> None:
    """Left: MB/s per core of each configuration (median, with the rounds' range); right: the driver's stage times."""
    rows = result["throughput"]["rows"]
    names = [f"{r['engine']} {r['workers']}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    medians = [r["mb_per_s_per_core"]["median"] for r in rows]
    errors = [
        [m - r["mb_per_s_per_core"]["min"] for m, r in zip(medians, rows)],
        [r["mb_per_s_per_core"]["max"] - m for m, r in zip(medians, rows)],
    ]
    left.bar(names, medians, yerr=errors, capsize=4, color="tab:blue")
    left.set_ylabel("MB/s per core (whole preparation)")
    left.set_title(result["throughput"]["source"])
    bottom = [0.0] * len(rows)
    for i, stage in enumerate(rows[0]["stages_s"]):
        seconds = [r["stages_s"].get(stage, 0.0) for r in rows]
        right.bar(names, seconds, bottom=bottom, label=stage, color=plt.cm.tab20(i))
        bottom = [b + s for b, s in zip(bottom, seconds)]
    right.set_ylabel("driver wall time, s (median)")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, out)
