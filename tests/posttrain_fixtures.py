"""A tiny base -> SFT -> DPO lineage shared by the post-training tests (built once per session, on demand)."""

from __future__ import annotations

import json

import pytest

from jaxllm.config import PosttrainConfig, replace
from jaxllm.posttrain.common import start_config
from jaxllm.posttrain.dpo import dpo_stage
from jaxllm.posttrain.sft import sft_stage
from jaxllm.train.loop import run
from tests.conftest import tiny_config


def arithmetic(n: int = 80) -> list[tuple[str, str, str]]:
    """(question, right answer, wrong answer): short enough for a 32-token context with a 512-token vocabulary."""
    return [(f"What is {a} plus {b}?", f"{a + b}.", f"{a + b + 1 + a % 3}.") for a in range(10) for b in range(n // 10)]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="session")
def tiny_lineage(tiny_corpus, tmp_path_factory):
    """{'root', 'base', 'sft', 'dpo': run summaries, 'sft_cfg', 'dpo_cfg'}: 6 steps each, on arithmetic chats."""
    root = tmp_path_factory.mktemp("posttrain")
    base_cfg = tiny_config(tiny_corpus, root / "cache", steps=6, eval_every=6, checkpoint_every=6)
    out = {"root": root, "base": run(base_cfg, root / "base", progress=False)}
    conversations = write_jsonl(
        root / "chats.jsonl",
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a, _ in arithmetic()
        ],
    )
    pairs = write_jsonl(root / "pairs.jsonl", [{"prompt": q, "chosen": a, "rejected": w} for q, a, w in arithmetic()])
    posttrain = PosttrainConfig(conversations=(conversations,), preferences=(pairs,), val_fraction=0.2, seq_len=24)
    for stage, start, make_stage in (("sft", "base", sft_stage), ("dpo", "sft", dpo_stage)):
        # log every step: DPO's first logged loss is then the one at the start (policy = reference)
        cfg = replace(
            base_cfg,
            name=stage,
            train=replace(base_cfg.train, init_from=str(root / start), log_every=1),
            posttrain=replace(posttrain, stage=stage),
        )
        out[f"{stage}_cfg"] = start_config(cfg)
        out[stage] = run(out[f"{stage}_cfg"], root / stage, progress=False, make_stage=make_stage)
    return out
