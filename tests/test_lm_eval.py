"""A standard harness agrees: a jaxllm model exported with `python -m jaxllm.hf export` and scored by EleutherAI's
lm-evaluation-harness (transformers backend, CPU, float32, offline, on a local task in lm-eval's own format) gives
the per-choice log-likelihoods (within 1e-3) and the accuracy of jaxllm's multiple-choice scoring
(`python -m jaxllm.evaluate`) on the same items.

Needs lm-eval, torch and transformers (requirements-dev.txt); skipped cleanly without them."""

import json
import pathlib

import jax
import numpy as np
import pytest
import sentencepiece as spm
from flax import nnx

from jaxllm import hf as hf_command
from jaxllm import tokenizer as tok
from jaxllm.config import Config, DataConfig, ModelConfig
from jaxllm.data.sources import stdlib_root
from jaxllm.eval import suite
from jaxllm.eval.lm_eval_task import PROMPT_TEMPLATE, write_task
from jaxllm.interop import hf
from jaxllm.model.transformer import abstract_model
from jaxllm.posttrain.chat_template import reply_prompt
from jaxllm.train.checkpoint import load_run

huggingface_hub = pytest.importorskip("huggingface_hub")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
datasets = pytest.importorskip("datasets")
lm_eval = pytest.importorskip("lm_eval")
lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
from transformers.tokenization_utils_base import generate_merges  # noqa: E402  (after the skips)

# float32 and the reference kernels on both sides, so the figures differ by float rounding only
TINY = ModelConfig(
    vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=32, kernels="reference", compute_dtype="float32"
)
# Handmade items that exercise the tokenisation: choices with and without a leading space, digits, a newline and a
# tab, a trailing space, characters outside the vocabulary (byte fallback). Choices are ASCII, so lm-eval's
# acc_norm (per character) and jaxllm's mc_acc_norm (per UTF-8 byte) divide by the same lengths.
ITEMS = [
    {"question": "What is 2 plus 3?", "choices": ["5.", "6.", "23."], "answer": 0},
    {"question": "Which module wraps text?", "choices": [" textwrap", " string", " glob"], "answer": 0},
    {"question": "Complete: def f(x):\n\treturn", "choices": [" x", " x + 1", "None"], "answer": 1},
    {"question": "Ünïcödé — 日本語? ", "choices": ["yes", "no"], "answer": 1},
    {"question": "Pick the heap function.", "choices": ["heappush", "heapify", "nlargest", "merge"], "answer": 1},
    {"question": "  Indented question", "choices": ["\tone", "two", " three"], "answer": 2},
    {"question": "Which is a glob pattern?", "choices": ["*.py", "[a-z]", "x", "?"], "answer": 0},
    {"question": "Translate: maison", "choices": ["house", "Haus", "casa"], "answer": 0},
    {"question": "How many sides has a square?", "choices": ["4", "3", "four", "IV"], "answer": 0},
    {"question": "string.ascii_lowercase starts with", "choices": ["abc", "ABC", "012"], "answer": 0},
    {"question": "x = [1, 2, 3]; len(x) ==", "choices": [" 3", " 2", "3"], "answer": 0},
    {"question": "Last one.", "choices": ["end", "stop", "fin", "halt"], "answer": 3},
]
TOLERANCE = 1e-3


def hf_tokenizer(sp_model: pathlib.Path) -> "transformers.PreTrainedTokenizerFast":
    """A transformers tokenizer that encodes text to the ids of jaxllm's sentencepiece BPE tokenizer (exports do not
    carry one yet): its vocabulary and merges (ranked by piece, as sentencepiece scores them), spaces as '▁' with
    no dummy prefix (identity normalisation), byte fallback, '\\n' and '\\t' as user symbols, and jaxllm's specials,
    by jaxllm's names (the .model file calls bos '<s>'), as special tokens that text containing them splits at."""
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    vocab = {(tok.SPECIALS[i] if i < len(tok.SPECIALS) else sp.id_to_piece(i)): i for i in range(sp.get_piece_size())}
    merges = generate_merges(vocab)
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    backend.normalizer = tokenizers.normalizers.Replace(" ", "\u2581")
    backend.decoder = tokenizers.decoders.Sequence(
        [tokenizers.decoders.Replace("\u2581", " "), tokenizers.decoders.ByteFallback(), tokenizers.decoders.Fuse()]
    )
    backend.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in tok.SPECIALS])
    backend.add_tokens([tokenizers.AddedToken(s, normalized=False) for s in tok.WHITESPACE_SYMBOLS])
    names = {f"{k}_token": tok.SPECIALS[i] for k, i in (("pad", tok.PAD), ("unk", tok.UNK), ("bos", tok.BOS))}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=tok.SPECIALS[tok.EOS], model_max_length=TINY.block_size, **names
    )


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Every parameter random, norm scales about 1 (drawn with numpy: eager JAX initialisation compiles each op)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(0.0, 0.2, leaf.shape).astype(np.float32)
        return 1 + noise if "scale" in jax.tree_util.keystr(path) else noise

    return jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param)))


def exported_model(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(run_dir, export dir) of a random tiny model with a BPE tokenizer trained on a few stdlib modules, made the
    way users make them: `python -m jaxllm.hf import` of a safetensors directory, then `export` of that run."""
    source = tmp_path / "source"
    source.mkdir()
    lines = [line for n in ("textwrap.py", "string.py", "glob.py", "heapq.py") for line in (stdlib_root() / n).open()]
    tok.train_bpe((line.rstrip("\n") for line in lines), TINY.vocab_size, source / "tokenizer.model")
    hf.write_safetensors(source / "model.safetensors", hf.to_hf_tensors(random_params(TINY), TINY))
    (source / "config.json").write_text(json.dumps(hf.hf_config(TINY)))
    (source / "jaxllm.json").write_text(Config(name="lm-eval", model=TINY, data=DataConfig(tokenizer="bpe")).to_json())
    run_dir = hf_command.import_(source, tmp_path / "run")
    return run_dir, hf_command.export(run_dir, tmp_path / "exported")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and datasets' cache in tmp_path. huggingface_hub and datasets read these variables when they are
    imported (already, above), so their module constants are set too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


@pytest.mark.slow
def test_lm_eval_gives_jaxllm_log_likelihoods_and_accuracy(tmp_path, offline):
    run_dir, exported = exported_model(tmp_path)
    tokenizer_dir = tmp_path / "hf_tokenizer"
    hf_tok = hf_tokenizer(exported / "tokenizer.model")
    hf_tok.save_pretrained(tokenizer_dir)

    # the same token sequences: the task's context (jaxllm's reply prompt in text) and a choice, encoded together as
    # lm-eval does, are the ids jaxllm scores
    run = load_run(run_dir)
    for item in ITEMS:
        prompt = reply_prompt([{"role": "user", "content": item["question"]}], run.tokenizer)
        context = PROMPT_TEMPLATE.replace("{{question}}", item["question"])
        for choice in item["choices"]:
            assert hf_tok.encode(context + choice, add_special_tokens=False) == prompt + run.tokenizer.encode(choice)

    expected = suite.choice_logprobs(run, ITEMS)
    summary = suite.multiple_choice(run, ITEMS)
    margins = [np.diff(np.sort(s)[-2:])[0] for s in expected]
    assert min(margins) > 10 * TOLERANCE, "a near tie would make acc depend on rounding: change the items"

    write_task(ITEMS, tmp_path / "tasks", "jaxllm_choices")
    results = lm_eval.simple_evaluate(
        model="hf",
        # no add_bos_token: the context starts with the text <bos>, and lm-eval then adds no other
        model_args=f"pretrained={exported},tokenizer={tokenizer_dir},dtype=float32",
        tasks=["jaxllm_choices"],
        # only our task: indexing lm-eval's thousands of built-in task files takes longer than the evaluation
        task_manager=lm_eval_tasks.TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        device="cpu",
        batch_size=16,
        log_samples=True,
    )
    samples = sorted(results["samples"]["jaxllm_choices"], key=lambda s: s["doc_id"])
    got = [np.array([float(r[0][0]) for r in s["resps"]]) for s in samples]
    assert [len(g) for g in got] == [len(item["choices"]) for item in ITEMS]
    worst = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
    assert worst < TOLERANCE, f"max |log-likelihood difference| {worst:.2e}"
    scores = results["results"]["jaxllm_choices"]
    assert scores["acc,none"] == summary["mc_acc"]
    assert scores["acc_norm,none"] == summary["mc_acc_norm"]
