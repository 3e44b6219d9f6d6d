"""Goodput: the share of a run's wall time spent in productive training steps, and where the rest went.

Each start of a run (an attempt) accounts its own wall time, from process start to its end: compile, data (the
host preparing batches), steps, eval (evaluations and the final sample), checkpoint (the loop blocked on saves),
startup (everything else: imports, data preparation, planning, restoring) and, on a resumed attempt, time lost to
restarts: the steps an earlier attempt computed after its last checkpoint, which this one computes again, at that
attempt's step time. Each attempt appends its start (the step it starts from, and where its records begin in
metrics.jsonl) and, when it ends (finished or stopped by a signal), its account to goodput.jsonl; an attempt that
was killed writes no account, so its wall time is taken as its last metrics record's time (a lower bound) and its
productive time as the steps it contributed at its logged step time. `run_goodput` sums every attempt of the run.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import time

import jax

from jaxllm.train.metrics import read_jsonl

PARTS = ("startup", "compile", "data", "steps", "eval", "checkpoint", "lost")
FILE = "goodput.jsonl"


class Goodput:
    """This attempt's seconds by part; `clock()` is the seconds since the process started."""

    def __init__(self, clock, from_step: int, lost_steps: int = 0, lost_s: float = 0.0):
        self.clock, self.from_step = clock, from_step
        self.lost_steps, self.lost_s = lost_steps, lost_s
        self.seconds = dict.fromkeys(PARTS, 0.0)

    @contextlib.contextmanager
    def timing(self, part: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def record(self, to_step: int) -> dict:
        """The attempt's account: seconds by part (startup is what the others leave of the wall time; steps that
        redo lost work count as lost), and the productive share."""
        wall = self.clock()
        parts = dict(self.seconds)
        lost = min(self.lost_s, parts["steps"])
        parts["steps"] -= lost
        parts["lost"] = lost
        parts["startup"] = max(wall - sum(parts.values()), 0.0)
        return {
            "from_step": self.from_step,
            "to_step": to_step,
            "wall_s": wall,
            "lost_steps": self.lost_steps,
            **{f"{k}_s": v for k, v in parts.items()},
            "goodput": parts["steps"] / wall if wall > 0 else 0.0,
        }


def _attempts(starts: list[dict], metrics: list[dict]) -> list[tuple[dict, list[dict], dict | None]]:
    """(start, its metrics records, its account or None) per attempt, from goodput.jsonl's and metrics.jsonl's
    records (goodput.jsonl holds each attempt's start record, then its account if it ended by itself)."""
    out: list = []
    for r in starts:
        if "attempt_start" in r:
            out.append([r, [], None])
        elif "account" in r and out:
            out[-1][2] = r["account"]
    for i, attempt in enumerate(out):
        end = out[i + 1][0]["metrics_line"] if i + 1 < len(out) else len(metrics)
        attempt[1] = metrics[attempt[0]["metrics_line"] : end]
    return [tuple(a) for a in out]


def _step_s(records: list[dict], tokens_per_step: int) -> float | None:
    """The latest logged seconds per step in these records."""
    rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    return tokens_per_step / rates[-1] if rates else None


def lost_to_restart(
    starts: list[dict], metrics: list[dict], resumed_from: int, tokens_per_step: int
) -> tuple[int, float]:
    """(steps, seconds) the latest attempt so far computed after `resumed_from`, the checkpoint a new attempt
    resumes from: lost, to be computed again. (0, 0.0) when nothing was lost or nothing was logged."""
    attempts = _attempts(starts, metrics)
    if not attempts:
        return 0, 0.0
    _, records, _ = attempts[-1]
    logged = max((r["step"] for r in records if "loss" in r), default=resumed_from)
    step_s = _step_s(records, tokens_per_step)
    lost = max(logged - resumed_from, 0)
    return lost, lost * step_s if step_s else 0.0


def run_goodput(starts: list[dict], metrics: list[dict], tokens_per_step: int) -> dict:
    """The whole run's account over its attempts: wall and productive seconds, goodput, restarts."""
    wall = productive = lost = 0.0
    attempts = _attempts(starts, metrics)
    for i, (start, records, account) in enumerate(attempts):
        if account is not None:
            wall += account["wall_s"]
            productive += account["steps_s"]
            lost += account["lost_s"]
            continue
        # killed: what it contributed is what the next attempt resumed from, at its logged step time
        wall += max((r.get("time_s", 0.0) for r in records), default=0.0)
        resumed = attempts[i + 1][0]["step"] if i + 1 < len(attempts) else start["step"]
        productive += max(resumed - start["step"], 0) * (_step_s(records, tokens_per_step) or 0.0)
    return {
        "attempts": len(attempts),
        "restarts": max(len(attempts) - 1, 0),
        "wall_s": wall,
        "productive_s": productive,
        "lost_s": lost,
        "goodput": productive / wall if wall > 0 else 0.0,
    }


def summary_line(account: dict, run: dict) -> str:
    parts = ", ".join(f"{k} {account[f'{k}_s']:.1f} s" for k in PARTS if k != "steps")
    line = (
        f"goodput: {100 * account['goodput']:.1f}% of this attempt's {account['wall_s']:.1f} s in training steps "
        f"({account['steps_s']:.1f} s); {parts}"
    )
    if run["restarts"]:
        line += (
            f"\n  over the run's {run['attempts']} attempts: {100 * run['goodput']:.1f}% of {run['wall_s']:.1f} s "
            f"({run['restarts']} restart{'s' if run['restarts'] > 1 else ''})"
        )
    return line


def _append(path: pathlib.Path, record: dict) -> None:
    if jax.process_index() == 0:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def start(run_dir: pathlib.Path, latest: int | None, tokens_per_step: int, clock) -> Goodput:
    """This attempt's account; a resumed one counts the steps its predecessor computed past the checkpoint it
    resumes from as lost."""
    lost = (0, 0.0)
    if latest:
        starts, metrics = read_jsonl(run_dir / FILE), read_jsonl(run_dir / "metrics.jsonl")
        lost = lost_to_restart(starts, metrics, latest, tokens_per_step)
    return Goodput(clock, latest or 0, *lost)


def mark_start(run_dir: pathlib.Path, step: int) -> None:
    """Appends this attempt's start to goodput.jsonl: its step, and where its records begin in metrics.jsonl."""
    metrics_line = len(read_jsonl(run_dir / "metrics.jsonl"))
    _append(run_dir / FILE, {"step": step, "attempt_start": time.time(), "metrics_line": metrics_line})


def close(account: Goodput, step: int, run_dir: pathlib.Path, tokens_per_step: int, say) -> dict:
    """Appends this attempt's account to goodput.jsonl, says it with the whole run's, returns both."""
    mine = account.record(step)
    _append(run_dir / FILE, {"step": step, "account": mine})
    whole = run_goodput(read_jsonl(run_dir / FILE), read_jsonl(run_dir / "metrics.jsonl"), tokens_per_step)
    say(summary_line(mine, whole))
    return {"attempt": mine, "run": whole}
