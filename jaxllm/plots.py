"""PNG plots: a run's training and held-out loss curves (and, for reinforcement learning, its reward and held-out
pass@1 in a panel below); `plt` is pyplot on the file-only Agg backend for every
other plot (import it from here, so that no command ever opens a window)."""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)


def plot_loss(metrics_path: pathlib.Path, out: pathlib.Path) -> None:
    records = [json.loads(line) for line in pathlib.Path(metrics_path).read_text().splitlines() if line.strip()]
    train = sorted((r["step"], r["loss"]) for r in records if "loss" in r)
    val = sorted((r["step"], r["val_loss"]) for r in records if "val_loss" in r)
    reward = sorted((r["step"], r["reward"]) for r in records if "reward" in r)
    passed = sorted((r["step"], r["pass@1"]) for r in records if "pass@1" in r)
    if reward or passed:
        fig, (ax, below) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
        if reward:
            below.plot(*zip(*reward), label="train reward (sampled replies, mean over each logged interval)", lw=1.2)
        if passed:
            below.plot(*zip(*passed), "o-", label="held-out pass@1 (greedy)", lw=1.5)
        below.set(xlabel="step", ylabel="share right", ylim=(0, 1))
        below.grid(alpha=0.3)
        below.legend()
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="held-out loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out)


def save_figure(fig, out: pathlib.Path) -> None:
    """Writes fig to out (PNG) whole or not at all, and closes it."""
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
