"""The benchmark commands on a tiny model (speed is not asserted: only that every row is measured and reported, with
the kernels `auto` chose and the machine it ran on)."""

import dataclasses
import json
import os

import jax
import pytest

from jaxllm.bench import __main__ as bench_command
from jaxllm.bench import results, runs
from jaxllm.config import Config, ConfigError, ModelConfig, TrainConfig
from jaxllm.kernels import probe

TINY = Config(
    model=ModelConfig(vocab_size=128, block_size=16, n_layer=2, n_head=2, n_embd=32), train=TrainConfig(batch_size=4)
)
BF16_FAST = {"float32": 250e9, "bfloat16": 1100e9}  # as an AVX-512 BF16 CPU measures


def test_bench_train_times_the_chosen_kernels_beside_the_alternatives(monkeypatch):
    monkeypatch.setattr(probe, "peaks", lambda: BF16_FAST)
    monkeypatch.setattr(runs, "DEPTHS", (1, 2))  # the compile-time rows, shallow: this test checks their shape
    result = runs.bench_train(TINY, compare="", steps=1, warmup=1, rounds=2)
    assert [(r["kernels"], r["dtype"], r["auto"]) for r in result["rows"]] == [
        ("xla_cpu", "bfloat16", True),
        ("xla_cpu", "float32", False),
        ("reference", "bfloat16", False),
    ]
    assert "kernels xla_cpu (one CPU device)" in result["choice"] and "compute bfloat16" in result["choice"]
    for row in result["rows"]:
        assert len(row["rounds"]) == 2 and row["s_per_step"] > 0
        assert row["tokens_per_s"] == TINY.train.batch_size * TINY.model.block_size / row["s_per_step"]
    assert [r["n_layer"] for r in result["compile"]] == list(runs.DEPTHS)
    table = results.train_table(result)
    assert "| jaxllm | xla_cpu (auto) | bfloat16 |" in table and result["choice"] in table


def test_bench_generate_reports_batch_1_and_8_over_interleaved_rounds(monkeypatch):
    monkeypatch.setattr(probe, "peaks", lambda: {"float32": 120e9, "bfloat16": 80e9})  # as an AVX2 CPU measures
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, block_size=32))
    result = runs.bench_generate(cfg, compare="", new_tokens=4, warmup=1, rounds=3)
    assert sorted({(r["batch"], r["kernels"], r["dtype"]) for r in result["rows"]}) == [
        (1, "reference", "float32"),
        (1, "xla_cpu", "bfloat16"),
        (1, "xla_cpu", "float32"),
        (8, "reference", "float32"),
        (8, "xla_cpu", "bfloat16"),
        (8, "xla_cpu", "float32"),
    ]
    for row in result["rows"]:
        assert len(row["rounds"]) == 3 and row["seconds"] == sorted(row["rounds"])[1]
        assert row["tokens_per_s"] == row["batch"] * 4 / row["seconds"]
    assert "| jaxllm | xla_cpu (auto) | float32 | 1 |" in results.generate_table(result)


def test_results_carry_their_machine_and_regenerate_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(results, "TABLE", tmp_path / "README.md")
    result = {
        "target": 1.88,
        "evals": [{"step": 100, "val_loss": 1.9, "wall_s": 5.0}],
        "reached": None,
        "command": "python -m jaxllm.train ...",
        "total_s": 9.0,
    }
    results.write("speedrun", result, results.default_path("speedrun"))
    saved = json.loads(next((tmp_path / "results").glob("speedrun-*.json")).read_text())
    p = saved["provenance"]
    assert p["cpu_model"] and p["versions"]["jax"] == jax.__version__ and p["commit"] and p["date"].endswith("UTC")
    table = (tmp_path / "README.md").read_text()
    assert f"## speedrun on {p['machine']}" in table and "target 1.88 not reached; best 1.9000" in table


def test_benchmarks_time_compilation_not_programs_kept_on_disk(monkeypatch):
    monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "true")
    try:
        with pytest.raises(ConfigError, match="usage"):
            bench_command.main(["nonsense"])
        assert not jax.config.jax_enable_compilation_cache  # this process
        assert os.environ["JAX_ENABLE_COMPILATION_CACHE"] == "false"  # and the speedrun's training process
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
