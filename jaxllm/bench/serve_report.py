"""The table and plot of `python -m jaxllm.bench serve` (jaxllm.bench.serve measures): apart from the measuring,
so that jaxllm.bench.results can regenerate the tables without the load client's httpx."""

from __future__ import annotations

import pathlib

from jaxllm.plots import plt, save_figure


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:,.0f}"


def _lost(row: dict) -> str:
    """Requests sent and never finished, and those the deadline left unsent."""
    return f"{row['lost']}" + (f" (+{row['unsent']} unsent)" if row["unsent"] else "")


def serve_table(result: dict) -> str:
    lines = [
        f"model {result['model']}; {result['settings']['max_tokens']} max tokens a reply, greedy, streamed; "
        "one pass per level (not a median of rounds), the servers one after the other",
        "",
        "| server | streams | ok | failed | lost | req/s | tokens/s | tok/req | TTFT p50 / p99 ms | ITL p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["servers"]:
        for r in s["levels"]:
            lines.append(
                f"| {s['server']} | {r['concurrency']} | {r['ok']}/{r['requests']} | {r['failed']} | "
                f"{_lost(r)} | {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:,.0f} | "
                f"{r['tokens_per_request']:.1f} | {_ms(r['ttft_p50_s'])} / {_ms(r['ttft_p99_s'])} | "
                f"{_ms(r['itl_p50_s'])} / {_ms(r['itl_p99_s'])} |"
            )
    ratios = result["ratios"]
    notes = [
        f"jaxllm tokens/s at 16 streams over 1: {ratios['jaxllm_16_over_1']:.2f}"
        if ratios["jaxllm_16_over_1"]
        else None,
        f"jaxllm over transformers at 16 streams: {ratios['jaxllm_over_hf_16']:.2f}"
        if ratios["jaxllm_over_hf_16"]
        else None,
        "greedy replies equal at 1 stream: {}/{}".format(*result["same_replies_at_1"])
        if "same_replies_at_1" in result
        else None,
    ]
    lines += ["", "; ".join(n for n in notes if n)] if any(notes) else []
    for s in result["servers"]:
        if s.get("soak"):
            k = s["soak"]
            rss = " -> ".join("-" if v is None else f"{v:,.0f}" for v in (k["rss_start_mib"], k["rss_end_mib"]))
            lines.append(
                f"\nsoak ({s['server']}): {k['requests']} requests at {k['concurrency']} streams, "
                f"{k['disconnected']} of {k['hang_ups_planned']} planned hung up mid-stream; {k['ok']} ok, "
                f"{k['failed']} failed, "
                f"{_lost(k)} lost; after it /health "
                + (
                    f"busy {k['busy_after']}, queued {k['queued_after']}"
                    if k["busy_after"] is not None
                    else "reports no slots"
                )
                + f"; resident memory {rss} MiB"
            )
    return "\n".join(lines)


def plot(result: dict, out: pathlib.Path) -> None:
    """tokens/s and TTFT p99 against streams in flight, one line per server."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for s in result["servers"]:
        levels = [r["concurrency"] for r in s["levels"]]
        left.plot(levels, [r["output_tokens_per_s"] for r in s["levels"]], "o-", label=s["server"])
        ttft = [1000 * r["ttft_p99_s"] if r["ttft_p99_s"] is not None else float("nan") for r in s["levels"]]
        right.plot(levels, ttft, "o-", label=s["server"])
    for ax, label in ((left, "output tokens/s (all streams)"), (right, "time to first token, p99 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["settings"]["levels"], [str(c) for c in result["settings"]["levels"]])
        ax.set(xlabel="streams in flight", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(result["model"], fontsize=9)
    save_figure(fig, out)
