"""A budgeted run's plan in words and pictures: its two-line summary, the record of planned against achieved, the
closing lines, and plan.png (the run against its plan). The plan itself is made by jaxllm.train.budget."""

from __future__ import annotations

import pathlib

from jaxllm.config import parse_duration
from jaxllm.plots import plt, save_figure
from jaxllm.scaling.laws import LossLaw, human
from jaxllm.train.metrics import format_eta, read_jsonl

EXTRAPOLATION_WARNING = 1.5  # a plan this many times beyond its law's largest swept budget says it extrapolates


def summary(plan: dict, budget_text: str) -> str:
    m, p = plan["model"], plan["predicted"]
    law = "law fitted for this setup" if plan["law"]["fitted_for_this_setup"] else "no law fitted for this setup"
    lines = [
        f"plan for {budget_text} ({law}: {plan['law']['source']}): {m['n_layer']} layers x {m['n_embd']} "
        f"({human(plan['params'])} params), {plan['steps']:,} steps ({human(plan['tokens'])} tokens, "
        f"{plan['flops']:.3g} FLOPs); {len(plan['measured'])} shapes measured ({plan['fresh_measurements']} now)",
    ]
    predicted = (
        f"predicted val_loss {p['val_loss']:.4f}, {p['val_bpb']:.4f} bits/byte"
        if plan["law"]["fitted_for_this_setup"]
        else "predicted loss: none (the law's losses are on another corpus)"
    )
    if p["seconds"] is not None:
        predicted += f"; {format_eta(p['seconds'])} from process start to the final evaluation"
    top = plan["law"].get("top_flops")
    if plan["law"]["fitted_for_this_setup"] and top and plan["flops"] > EXTRAPOLATION_WARNING * top:
        predicted += (
            f"\n  the law extrapolates: {plan['flops'] / top:.1f}x beyond its sweep's largest budget ({top:.3g} FLOPs);"
            " a sweep reaching it predicts better (python -m jaxllm.scaling --budgets=...)"
        )
    lines.append("  " + predicted)
    return "\n".join(lines)


def outcome(plan: dict, final: dict, seconds: float | None) -> dict:
    """The plan beside what the run achieved (a metrics.jsonl record); seconds: None for a resumed run. A steered
    run's steps differ from the plan's, so the law's loss for the steps it ran is given too: the law's error apart
    from the planning's."""
    law = LossLaw(**{k: plan["law"][k] for k in ("E", "A", "B", "alpha", "beta")})
    tokens = final["steps"] * plan["tokens"] / plan["steps"]
    return {
        "step": final["steps"],
        "plan_vs_achieved": True,
        "planned_steps": plan["steps"],
        "achieved_steps": final["steps"],
        "planned_val_loss": plan["predicted"]["val_loss"],
        "law_val_loss_at_achieved_steps": law.loss(plan["params"], tokens),
        "achieved_val_loss": final["val_loss"],
        "planned_val_bpb": plan["predicted"]["val_bpb"],
        "achieved_val_bpb": final["val_bpb"],
        "planned_s": plan["predicted"]["seconds"],
        "achieved_s": seconds,
        "law_fitted_for_this_setup": plan["law"]["fitted_for_this_setup"],
    }


def outcome_lines(record: dict) -> str:
    loss_gap = 100 * (record["achieved_val_loss"] / record["planned_val_loss"] - 1)
    line = (
        f"planned val_loss {record['planned_val_loss']:.4f}, achieved {record['achieved_val_loss']:.4f} "
        f"({loss_gap:+.1f}%); planned {record['planned_val_bpb']:.4f} bits/byte, "
        f"achieved {record['achieved_val_bpb']:.4f}"
        if record["law_fitted_for_this_setup"]
        else "no law fitted for this setup, so no predicted loss to compare (python -m jaxllm.scaling fits one)"
    )
    if record["law_fitted_for_this_setup"] and record["achieved_steps"] != record["planned_steps"]:
        line += (
            f"\nsteered to {record['achieved_steps']:,} steps (planned {record['planned_steps']:,}), for which the "
            f"law predicts {record['law_val_loss_at_achieved_steps']:.4f}"
        )
    if record["planned_s"] is not None:
        achieved = "not measured (resumed run)" if record["achieved_s"] is None else format_eta(record["achieved_s"])
        line += f"\nplanned {format_eta(record['planned_s'])} to the final evaluation, achieved {achieved}"
    return line


def plot(metrics_path: pathlib.Path, plan: dict, out: pathlib.Path) -> None:
    """plan.png: the run's losses against time since process start, with the planned end and loss."""
    records = read_jsonl(metrics_path)
    train = [r for r in records if "loss" in r and "time_s" in r]
    val = [r for r in records if "val_loss" in r and "time_s" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["time_s"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    ax.plot([r["time_s"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    p = plan["predicted"]
    end = p["seconds"] if p["seconds"] is not None else (val[-1]["time_s"] if val else 0)
    if plan["law"]["fitted_for_this_setup"]:
        ax.plot([end], [p["val_loss"]], "*", ms=16, mec="black", label=f"planned: {p['val_loss']:.3f}")
    if p["seconds"] is not None:
        ax.axvline(p["seconds"], color="gray", ls="--", lw=1, label=f"planned end ({format_eta(p['seconds'])})")
        budget_s = parse_duration(plan["budget"])
        ax.axvspan(0.9 * budget_s, 1.1 * budget_s, color="green", alpha=0.08, label="budget +-10%")
    ax.set(xlabel="seconds since process start", ylabel="loss (nats/token)", title="run against its plan")
    if train:
        ax.set_ylim(top=min(max(r["loss"] for r in train), 2 * train[-1]["loss"]))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out)
