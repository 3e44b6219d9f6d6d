"""The training log: metrics.jsonl and TensorBoard events, and a progress line per interval with loss, rate, MFU
and ETA."""

from __future__ import annotations

import json
import math
import os
import pathlib
import time

import numpy as np

from jaxllm import storage
from jaxllm.train.event_file import EventFile


def clock_from(started_at: float):
    """() -> seconds since started_at (seconds since the epoch): the clock a run's budget and time_s are on."""
    return lambda: time.time() - started_at


class MetricsLog:
    """metrics.jsonl (appended, so a resumed run continues it) and the same records as TensorBoard scalars in an
    event file beside it (jaxllm.train.event_file); written by process 0 only, into a local folder (a gs:// run's
    reach it through jaxllm.train.run_files)."""

    def __init__(self, path: pathlib.Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.events = EventFile(pathlib.Path(path).parent)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.events.write(record)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL file (metrics.jsonl, goodput.jsonl, ...), local or gs://; none for a file that is not
    there."""
    path = storage.path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Every log_every steps: reads the step's metrics (which waits for the device, so the interval's time is
    real), writes a metrics record and prints a line. step_seconds_at_peak: a step's FLOPs over the peak FLOP/s.
    `steps` is the run's end, which a steered run moves. A stage's own metrics (DPO's reward accuracy, RL's reward)
    are the interval's means, summed on the device as the steps go: one step's figure is too noisy to read."""

    def __init__(
        self, steps: int, tokens_per_step: int, step_seconds_at_peak: float, log: MetricsLog, say, log_every: int, clock
    ):
        self.steps, self.tokens_per_step, self.at_peak = steps, tokens_per_step, step_seconds_at_peak
        self.log, self.say, self.log_every, self.clock = log, say, log_every, clock
        self.start, self.n = time.perf_counter(), 0
        self.intervals: list[tuple[int, float]] = []  # (steps, seconds) of each logged interval
        self.sums: dict = {}  # the stage's own metrics summed over the interval's self.n steps, device scalars

    def step(self, done: int, metrics: dict) -> None:
        self.n += 1
        for k, v in metrics.items():
            if k not in ("loss", "grad_norm", "lr"):
                self.sums[k] = self.sums[k] + v if k in self.sums else v
        if done % self.log_every and done != self.steps:
            return
        loss = float(metrics["loss"])
        elapsed = time.perf_counter() - self.start
        rate = self.n * self.tokens_per_step / elapsed
        self.intervals.append((self.n, elapsed))
        mfu = rate / self.tokens_per_step * self.at_peak
        if not math.isfinite(loss):
            raise RuntimeError(f"loss became {loss} at step {done}; lower optim.lr or check the data")
        lr = float(metrics["lr"])
        extra = {k: float(v) / self.n for k, v in self.sums.items()}
        self.sums = {}
        self.log.write(
            {
                "step": done,
                "end": self.steps,  # the run's last step as planned, or as steered by now
                "loss": loss,
                "lr": lr,
                "grad_norm": float(metrics["grad_norm"]),
                "tokens_per_s": rate,
                "mfu": mfu,
                "time_s": self.clock(),
                **extra,
            }
        )
        eta = (self.steps - done) * self.tokens_per_step / rate
        self.say(
            f"step {done}/{self.steps} | loss {loss:.4f} | "
            + "".join(f"{k} {v:.3f} | " for k, v in extra.items())
            + f"lr {lr:.2e} | {rate:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {format_eta(eta)}"
        )
        self.start, self.n = time.perf_counter(), 0

    def resume_clock(self, done: int) -> None:
        """Restarts the interval's clock after a logged step, so evaluation and checkpoint time are not counted."""
        if done % self.log_every == 0:
            self.start = time.perf_counter()

    def recent_step_s(self, window_s: float) -> float:
        """Seconds a step over the latest logged intervals that add up to window_s (all of them if fewer)."""
        steps = seconds = 0.0
        for n, elapsed in reversed(self.intervals):
            steps, seconds = steps + n, seconds + elapsed
            if seconds >= window_s:
                break
        return seconds / steps if steps else float("nan")

    def steady_rate(self) -> float:
        """The median rate over intervals, leaving out the first (it includes warm-up); NaN before any."""
        intervals = self.intervals[1:] if len(self.intervals) > 1 else self.intervals
        rates = [n * self.tokens_per_step / seconds for n, seconds in intervals]
        return float(np.median(rates)) if rates else float("nan")
