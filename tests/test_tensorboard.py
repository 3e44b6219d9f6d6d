"""TensorBoard event files beside metrics.jsonl, read back with TensorBoard's own reader: every record's figures at
its step, equal to metrics.jsonl's as float32, under readable tags, and the run's config as text."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxllm.train.metrics import MetricsLog

# the tags a reader of TensorBoard expects, spelled out here apart from jaxllm.train.event_file's rules
TRAIN_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "mfu": "train/mfu",
    "time_s": "train/time_s",
    "end": "train/end",
}
EVAL_TAGS = {"val_loss": "val/loss", "val_bpb": "val/bpb", "time_s": "val/time_s"}


def read_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every event
    events.Reload()
    return events


def scalars(events: EventAccumulator) -> dict[str, list[tuple[int, np.float32]]]:
    return {tag: [(e.step, np.float32(e.value)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def expected(records: list[dict], stage: str) -> dict[str, list[tuple[int, np.float32]]]:
    """Tag -> (step, value as float32) of every number of every record, in order."""
    out: dict = {}
    for r in records:
        tags = EVAL_TAGS if "val_loss" in r else TRAIN_TAGS
        for key, value in r.items():
            if key != "step":
                out.setdefault(tags.get(key, f"{stage}/{key}"), []).append((r["step"], np.float32(value)))
    return out


def config_text(events: EventAccumulator) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in events.Tensors("config")]


def indented(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def test_records_become_scalars_at_their_steps_and_the_config_text(tmp_path):
    config = json.dumps({"name": "r", "posttrain": {"stage": "rl"}}, indent=1)
    (tmp_path / "config.json").write_text(config)
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)
    log.write({"step": 0, "val_loss": 2.5, "val_bpb": 1.25, "pass@1": 0.125, "time_s": 3.0})
    log.write({"step": 2, "end": 4, "loss": 2.0, "lr": 1e-3, "grad_norm": 0.5, "mfu": 0.01, "reward": 0.3})
    # the budget's outcome, logged by a second MetricsLog of the same process: the same event file, flags left out
    MetricsLog(tmp_path / "metrics.jsonl", enabled=True).write(
        {"step": 4, "plan_vs_achieved": True, "planned_steps": 4, "achieved_s": None}
    )
    MetricsLog(tmp_path / "metrics.jsonl", enabled=True).write({"note": "a record without a step"})
    MetricsLog(tmp_path / "elsewhere.jsonl", enabled=False).write({"step": 9, "loss": 1.0})  # not process 0

    events = read_events(tmp_path)
    f32 = np.float32
    assert scalars(events) == {
        "val/loss": [(0, f32(2.5))],
        "val/bpb": [(0, f32(1.25))],
        "rl/pass@1": [(0, f32(0.125))],
        "val/time_s": [(0, f32(3.0))],
        "train/end": [(2, f32(4))],
        "train/loss": [(2, f32(2.0))],
        "train/lr": [(2, f32(1e-3))],
        "train/grad_norm": [(2, f32(0.5))],
        "train/mfu": [(2, f32(0.01))],
        "rl/reward": [(2, f32(0.3))],
        "plan/planned_steps": [(4, f32(4))],
    }
    assert config_text(events) == [indented(config)]
    assert [e.step for e in events.Tensors("config")] == [0]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert not (tmp_path / "elsewhere.jsonl").exists()


@pytest.mark.slow  # the shared tiny lineage takes about half a minute to train when no other test built it
@pytest.mark.parametrize("run", ["base", "sft", "dpo"])
def test_a_training_runs_events_equal_its_metrics_jsonl(tiny_lineage, run):
    run_dir = tiny_lineage["root"] / run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stage = "" if run == "base" else run
    events = read_events(run_dir)
    want = expected(records, stage)
    assert scalars(events) == want
    # base logs every 2 steps; the post-training runs every step (log_every=1)
    assert [step for step, _ in want["train/loss"]] == ([2, 4, 6] if run == "base" else [1, 2, 3, 4, 5, 6])
    if run == "dpo":
        assert {"dpo/reward_acc", "dpo/margin", "dpo/chosen_reward"} <= set(want)
    assert config_text(events) == [indented((run_dir / "config.json").read_text())]
