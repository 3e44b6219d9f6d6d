"""The benchmark commands on a tiny model (speed is not asserted: only that every row is measured and reported)."""

import dataclasses
import os

import jax
import pytest

from jaxllm import bench
from jaxllm.config import Config, ConfigError, ModelConfig, TrainConfig

TINY = Config(model=ModelConfig(vocab_size=128, block_size=16, n_layer=2, n_head=2, n_embd=32),
              train=TrainConfig(batch_size=4))


def test_bench_train_reports_each_dtype_over_interleaved_rounds_and_compile_times():
    result = bench.bench_train(TINY, compare="", steps=1, warmup=1, rounds=2)
    assert [(r["impl"], r["dtype"]) for r in result["rows"]] == [("jaxllm", "float32"), ("jaxllm", "bfloat16")]
    for row in result["rows"]:
        assert len(row["rounds"]) == 2 and row["s_per_step"] > 0
        assert row["tokens_per_s"] == TINY.train.batch_size * TINY.model.block_size / row["s_per_step"]
    assert [r["n_layer"] for r in result["compile"]] == list(bench.DEPTHS)
    bench.print_train(result)


def test_bench_generate_reports_batch_1_and_8_over_interleaved_rounds():
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, block_size=32))
    result = bench.bench_generate(cfg, compare="", new_tokens=4, warmup=1, rounds=3)
    assert sorted({(r["batch"], r["dtype"]) for r in result["rows"]}) == [
        (1, "bfloat16"), (1, "float32"), (8, "bfloat16"), (8, "float32")]
    for row in result["rows"]:
        assert len(row["rounds"]) == 3 and row["seconds"] == sorted(row["rounds"])[1]
        assert row["tokens_per_s"] == row["batch"] * 4 / row["seconds"]
    bench.print_generate(result)


def test_benchmarks_time_compilation_not_programs_kept_on_disk(monkeypatch):
    monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "true")
    try:
        with pytest.raises(ConfigError, match="usage"):
            bench.main(["nonsense"])
        assert not jax.config.jax_enable_compilation_cache  # this process
        assert os.environ["JAX_ENABLE_COMPILATION_CACHE"] == "false"  # and the speedrun's training process
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
