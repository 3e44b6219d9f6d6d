"""TensorBoard event files beside metrics.jsonl: each metrics record's figures as scalars at its step, the run's
config as text. `tensorboard --logdir=runs/` shows every run under runs/ (one run per directory).

Tags: a training record's figures as train/loss, train/lr, train/grad_norm, train/tokens_per_s, train/mfu,
train/time_s, train/end; an evaluation's as val/loss, val/bpb, val/time_s; a stage's own (DPO's reward_acc, RL's
reward and held-out pass@1) under the stage's name: dpo/reward_acc, rl/reward, rl/pass@1; a budget's plan against
its outcome as plan/<key>. TensorBoard keeps scalars as float32.

Each record is appended to the process's event file and the file closed, as metrics.jsonl is: no writer thread and
nothing buffered, so a killed run leaves every record it logged readable. The protos and the record framing are
TensorBoard's own TensorFlow-free ones; not tensorboardX's writer, which imports torch wherever torch is installed
(3.3 s and 184 MB more for every training process). Written into a local folder, like metrics.jsonl: a gs://
run's files are uploaded whole from there (jaxllm.train.run_files); `tensorboard --logdir=gs://...` reads them.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.summary.writer.record_writer import RecordWriter

TRAIN_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "time_s", "end")  # every training record's
PREFIX = "events.out.tfevents."  # TensorBoard reads the files whose names hold 'tfevents'


def tag(key: str, record: dict, stage: str) -> str:
    """The TensorBoard tag of a record's figure (see the module docstring); stage: posttrain.stage or ''."""
    if "plan_vs_achieved" in record:
        return f"plan/{key}"
    if "val_loss" in record:
        return (
            f"val/{key.removeprefix('val_')}"
            if key in ("val_loss", "val_bpb", "time_s") or not stage
            else f"{stage}/{key}"
        )
    return f"train/{key}" if key in TRAIN_KEYS or not stage else f"{stage}/{key}"


def scalars(record: dict, stage: str) -> Summary:
    """The record's numbers (not the step, flags or absent figures) as scalars."""
    return Summary(
        value=[
            Summary.Value(tag=tag(k, record, stage), simple_value=v)
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
    )


def config_text(config_json: str) -> Summary:
    """The config as a Markdown code block (indented four spaces), as TensorBoard's text dashboard shows it."""
    return text_pb("config", "\n".join("    " + line for line in config_json.splitlines()))


class EventFile:
    """This process's event file in run_dir, named by its start time, host and process: created at the first
    record with the file's version and the run's config.json as text (at that record's step), appended to after."""

    def __init__(self, run_dir: pathlib.Path):
        self.run_dir, self.path, self.stage = pathlib.Path(run_dir), None, ""

    def _open(self, step: int) -> list[Event]:
        """Finds or names this process's file; the events that start a new one."""
        mine = f".{socket.gethostname()}.{os.getpid()}"
        found = sorted(self.run_dir.glob(f"{PREFIX}*{mine}"))
        config = self.run_dir / "config.json"
        config_json = config.read_text() if config.is_file() else ""
        self.stage = json.loads(config_json)["posttrain"]["stage"] if config_json else ""
        if found:  # a second log of this process into the run (the budget's outcome), or a resumption in-process
            self.path = found[-1]
            return []
        self.path = self.run_dir / f"{PREFIX}{time.time():.0f}{mine}"
        start = [Event(wall_time=time.time(), file_version="brain.Event:2")]
        if config_json:
            start.append(Event(wall_time=time.time(), step=step, summary=config_text(config_json)))
        return start

    def write(self, record: dict) -> None:
        """Appends the record's scalars; a record without a step has no place on TensorBoard's axis."""
        if "step" not in record:
            return
        events = self._open(record["step"]) if self.path is None else []
        events.append(Event(wall_time=time.time(), step=record["step"], summary=scalars(record, self.stage)))
        with open(self.path, "ab") as f:
            writer = RecordWriter(f)
            for event in events:
                writer.write(event.SerializeToString())
