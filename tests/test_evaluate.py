"""The evaluation suite: multiple-choice scoring on a model whose likelihoods are known, the held-out text and
compressors, and the whole table over a tiny base -> SFT -> DPO lineage."""

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import evaluate as evaluate_command
from jaxllm import kernels
from jaxllm import tokenizer as tok
from jaxllm.config import Config
from jaxllm.eval import suite as evaluate
from jaxllm.tokenizer import train_char
from jaxllm.train.checkpoint import LoadedRun, load_run
from tests.posttrain_fixtures import arithmetic, write_jsonl
from tests.test_sft import TINY, tiny_params


def uniform_run(tmp_path) -> LoadedRun:
    """All parameters zero: every logit is 0, so every token has log-probability -ln(vocab)."""
    graphdef, params = tiny_params()
    tokenizer = train_char(["abcdefq?"], tmp_path / "chars.json")
    choice = kernels.Choice(TINY.kernels, TINY.compute_dtype, "as configured")
    return LoadedRun(
        Config(model=TINY), graphdef, jax.tree.map(jnp.zeros_like, params), tokenizer, 0, choice, Config(model=TINY)
    )


def test_multiple_choice_scores_only_the_choice_tokens(tmp_path):
    run = uniform_run(tmp_path)
    items = [
        {"question": "q?", "choices": ["abc", "a", "abcdef"], "answer": 1},
        {"question": "qq?", "choices": ["ab", "abcd"], "answer": 1},
    ]
    scores = evaluate.choice_logprobs(run, items)
    per_token = -math.log(TINY.vocab_size)
    np.testing.assert_allclose(scores[0], [3 * per_token, per_token, 6 * per_token], rtol=1e-5)
    np.testing.assert_allclose(scores[1], [2 * per_token, 4 * per_token], rtol=1e-5)
    result = evaluate.multiple_choice(run, items)
    # total log-likelihood prefers the shortest choice: right for item 0, wrong for item 1; per byte all tie
    assert result["mc_acc"] == 0.5 and result["mc_acc_norm"] == 0.0
    assert result["mc_chance"] == pytest.approx((1 / 3 + 1 / 2) / 2) and result["mc_items"] == 2


def test_heldout_windows_are_one_contiguous_text():
    tokens = np.arange(100, dtype=np.int32)
    rows = evaluate.heldout_windows(tokens, 8, 5)
    np.testing.assert_array_equal(rows["targets"].reshape(-1), tokens[1:41])
    np.testing.assert_array_equal(rows["inputs"].reshape(-1), tokens[:40])
    assert evaluate.heldout_windows(tokens, 8, 50)["inputs"].shape == (12, 8)  # as many as the split holds


def test_compressors_on_text():
    text = "def f(x):\n    return x + 1\n" * 200
    bpb = evaluate.compressor_bpb(text)
    assert set(bpb) == {"gzip -9", "bz2 -9", "xz -9e"} and all(0 < v < 1 for v in bpb.values())


@pytest.mark.slow
def test_evaluate_lineage_end_to_end(tiny_lineage, capsys):
    root = tiny_lineage["root"]
    choices = write_jsonl(
        root / "choices.jsonl", [{"question": q, "choices": [w, a], "answer": 1} for q, a, w in arithmetic(20)]
    )
    assert evaluate.lineage(root / "dpo") == [root / "base", root / "sft", root / "dpo"]
    assert (
        evaluate_command.main(
            [f"--run_dir={root / 'dpo'}", f"--choices={choices}", "--text_windows=4", "--per_task=16"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "multiple choice acc (total)" in out and "xz -9e" in out and "DPO held-out reward acc" in out
    results = json.loads((root / "dpo" / "evaluation.json").read_text())
    assert [r["stage"] for r in results["runs"].values()] == ["base", "sft", "dpo"]
    dpo = results["runs"][str(root / "dpo")]
    assert 0 <= dpo["dpo_heldout"]["reward_acc"] <= 1 and dpo["mc_items"] == 20 and dpo["mc_chance"] == 0.5
    assert "pass@1 count" in out and "McNemar" in out and len(dpo["tasks"]["count"]["correct"]) == 16
    assert "maj@8 all (sampled)" in out and 0 <= dpo["tasks_sampled"]["count"]["majority"] <= 1
    assert (root / "dpo" / "evaluation.png").stat().st_size > 1000


def test_chat_tasks_a_character_tokenizer_cannot_encode_are_named_not_crashed_on(tmp_path):
    chars = tok.train_char(["to be or not to be?\n"], tmp_path / "tokenizer.json")
    items = [{"question": "to be?", "choices": ["be", "not"], "answer": 0}]
    assert evaluate._unencodable(chars, items, ["or not"]) == ""
    assert "'`'" in evaluate._unencodable(chars, items, ["`x`"])
    assert "'Z'" in evaluate._unencodable(chars, [{**items[0], "choices": ["Zed", "be"]}], [])


@pytest.mark.slow
def test_reading_a_run_logs_no_warnings(tiny_lineage, caplog):

    with caplog.at_level(logging.WARNING):
        run = load_run(tiny_lineage["root"] / "sft")
    assert run.step == 6
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
