"""Sampling and the generate / hf command lines: greedy equivalences, one compilation per shape, streaming, and
a trained run that goes out to transformers and back in."""

import json
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm import generate as generate_command
from jaxllm import hf as hf_command
from jaxllm.cli import run_main
from jaxllm.config import ConfigError, ModelConfig, replace
from jaxllm.inference import generate
from jaxllm.train.checkpoint import load_run
from jaxllm.train.loop import run
from tests.conftest import random_model, tiny_config

CFG = ModelConfig(
    family="llama", vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, compute_dtype="float32"
)


def split_model(cfg: ModelConfig):
    return nnx.split(random_model(cfg), nnx.Param)


def test_top_k_1_equals_greedy_whatever_the_temperature_and_seed():
    logits = jax.random.normal(jax.random.key(0), (8, 64)) * 3
    greedy = generate.sample_logits(logits, jax.random.key(0), 0.0, 0, 1.0)
    for seed, temperature in ((1, 0.7), (2, 1.5), (3, 5.0)):
        sampled = generate.sample_logits(logits, jax.random.key(seed), temperature, 1, 1.0)
        np.testing.assert_array_equal(sampled, greedy)
    # a nucleus smaller than any single token's mass keeps only the top token too
    np.testing.assert_array_equal(generate.sample_logits(logits, jax.random.key(4), 1.0, 0, 1e-6), greedy)


def test_batched_prompts_of_different_lengths_decode_as_they_would_alone_with_one_compilation(caplog, kernel_set):
    cfg = replace(CFG, kernels=kernel_set)
    graphdef, params = split_model(cfg)
    prompts = [[2, 10, 11, 12, 13, 14], [2, 20], [2, 30, 31, 32]]
    # 12 tokens: the prefill's and 11 decoding steps, as two chunks of 8 (the last 5 computed and dropped)
    sampling = generate.SamplingConfig(max_new_tokens=12, temperature=0.0)
    assert generate.DECODE_CHUNK == 8
    stop = ()  # random weights: never stop early, so every row runs the whole budget
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):  # every XLA compilation, cache keys aside
        batched = np.stack(list(generate.generate_tokens(graphdef, params, cfg, prompts, sampling, stop)), axis=1)
    compiled = sum(r.getMessage().startswith("Compiling jit(_decode)") for r in caplog.records)
    for row, prompt in zip(batched, prompts):
        alone = np.stack(list(generate.generate_tokens(graphdef, params, cfg, [prompt], sampling, stop)), axis=1)
        np.testing.assert_array_equal(row, alone[0])
    # the batch compiled the decode step once for its shape; each single prompt added one shape (B=1, its length)
    assert compiled == 1
    # a full-forward greedy rollout agrees with the cached decoding
    model = nnx.merge(graphdef, params)
    tokens = list(prompts[0])
    for _ in range(12):
        logits, _ = model(jnp.asarray([tokens]))
        tokens.append(int(jnp.argmax(logits[0, -1])))
    assert tokens[len(prompts[0]) :] == batched[0].tolist()


@pytest.mark.parametrize(
    "total, lengths", [(22, [22]), (144, [64, 128, 144]), (256, [64, 128, 192, 256]), (1000, [256, 512, 768, 1000])]
)
def test_the_cache_grows_in_at_most_four_lengths(total, lengths):
    seen = [generate.cache_length(needed, total) for needed in range(1, total + 1)]
    assert sorted(set(seen)) == lengths
    assert all(needed <= length for needed, length in zip(range(1, total + 1), seen))


def cache_lengths_used(monkeypatch) -> list[int]:
    """The cache lengths generate_tokens makes and grows to, from now on."""
    lengths = []
    init, grow = generate.jit_init_cache, generate.grow_cache
    monkeypatch.setattr(generate, "jit_init_cache", lambda cfg, b, n: lengths.append(n) or init(cfg, b, n))
    monkeypatch.setattr(generate, "grow_cache", lambda cache, cfg, n: lengths.append(n) or grow(cache, cfg, n))
    return lengths


def test_decoding_on_a_growing_cache_equals_decoding_on_the_whole_cache(monkeypatch, kernel_set):
    cfg = replace(CFG, block_size=160, kernels=kernel_set)
    graphdef, params = split_model(cfg)
    prompts = [[2, 10, 11, 12, 13, 14], [2, 20], [2, 30, 31, 32]]
    sampling = generate.SamplingConfig(max_new_tokens=140, temperature=0.9, top_k=20, seed=3)
    lengths = cache_lengths_used(monkeypatch)
    grown = np.stack(list(generate.generate_tokens(graphdef, params, cfg, prompts, sampling, ())))
    # the prompts' 6 slots and 18 whole chunks of 8 (139 decoded tokens); this tiny model's weights are small next to
    # its cache
    assert lengths == [64, 128, 6 + 18 * 8]
    monkeypatch.setattr(generate, "cache_length", lambda needed, total: total)
    whole = np.stack(list(generate.generate_tokens(graphdef, params, cfg, prompts, sampling, ())))
    chex.assert_shape(grown, (140, 3))
    np.testing.assert_array_equal(grown, whole)


def test_a_cache_small_next_to_the_weights_starts_whole(monkeypatch, kernel_set):
    cfg = replace(
        CFG, block_size=160, vocab_size=4096, kernels=kernel_set
    )  # a 32 x 4096 head: 512 KB read a step, the cache 8 KB
    graphdef, params = split_model(cfg)
    lengths = cache_lengths_used(monkeypatch)
    sampling = generate.SamplingConfig(max_new_tokens=140, temperature=0.0)
    assert len(list(generate.generate_tokens(graphdef, params, cfg, [[2, 10, 11]], sampling, ()))) == 140
    assert lengths == [3 + 18 * 8]  # the prompt and 18 whole chunks of 8


@pytest.mark.slow
def test_train_generate_export_import_and_fine_tune(tiny_corpus, tmp_path, capsys):
    cfg = tiny_config(tiny_corpus, tmp_path / "cache", steps=4)
    cfg = replace(cfg, model=replace(cfg.model, family="llama", n_kv_head=1, tie_embeddings=False))
    run(cfg, tmp_path / "run", progress=False)

    argv = [f"--run_dir={tmp_path / 'run'}", "--prompt=def f(x):", "--max_new_tokens=12", "--temperature=0"]
    assert run_main(generate_command.main, argv) == 0
    streamed = capsys.readouterr().out
    loaded = load_run(tmp_path / "run")
    expected = generate.complete(
        loaded.graphdef,
        loaded.params,
        loaded.cfg.model,
        loaded.tokenizer,
        ["def f(x):"],
        generate.SamplingConfig(max_new_tokens=12, temperature=0.0),
    )[0]
    assert streamed == "def f(x):" + expected + "\n"

    assert run_main(hf_command.main, ["export", f"--run_dir={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}"]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.model", "jaxllm.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()
    }
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (
        run_main(hf_command.main, ["import", f"--hf_dir={tmp_path / 'hf'}", f"--run_dir={tmp_path / 'imported'}"]) == 0
    )
    capsys.readouterr()
    assert run_main(generate_command.main, [*argv[1:], f"--run_dir={tmp_path / 'imported'}"]) == 0
    assert capsys.readouterr().out == streamed
    imported = load_run(tmp_path / "imported")
    assert imported.cfg == loaded.cfg and imported.step == 0
    for a, b in zip(jax.tree.leaves(imported.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(a, b)

    fine_tune = replace(cfg, train=replace(cfg.train, steps=2, init_from=f"hf:{tmp_path / 'hf'}"))
    first_loss = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    run(fine_tune, tmp_path / "tuned", progress=False)
    tuned_loss = json.loads((tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert tuned_loss < first_loss  # starts where the trained run ended, not from scratch

    bad = replace(fine_tune, model=replace(cfg.model, n_layer=3))
    with pytest.raises(ConfigError, match="n_layer=2"):
        run(bad, tmp_path / "bad", progress=False)


def test_generate_cli_names_the_missing_run(tmp_path, capsys):
    assert run_main(generate_command.main, [f"--run_dir={tmp_path / 'nothing'}", "--prompt=x"]) == 2
    assert "holds no checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize(
    "main, argv, message",
    [
        (
            generate_command.main,
            ["--prompt=x"],
            "python -m jaxllm.generate: the following arguments are required: --run_dir",
        ),
        (generate_command.main, ["--run_dir=r", "--top_k=many"], "argument --top_k: invalid int value: 'many'"),
        (
            hf_command.main,
            ["export", "--run_dir=r"],
            "python -m jaxllm.hf export: the following arguments are required: --out",
        ),
    ],
)
def test_flag_errors_are_one_line_with_status_2(main, argv, message, capsys):
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "--help" in err, err
