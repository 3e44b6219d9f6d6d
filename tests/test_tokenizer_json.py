"""A transformers tokenizer.json as a jaxllm tokenizer: the encodings of transformers' AutoTokenizer on the same
file, exact token bytes, the checkpoint's own special ids, and a tiny GPT-2 (random weights, the vocabulary of a
tokenizer.json built here) imported with it, given the chat tokens, fine-tuned and exported back to transformers.

Needs torch and transformers (requirements-dev.txt); skipped cleanly without them."""

import json
import random

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxllm import hf as hf_command
from jaxllm import tokenizer as tok
from jaxllm.cli import run_main
from jaxllm.config import PosttrainConfig, TrainConfig, replace
from jaxllm.interop import hf, hf_tokenizer
from jaxllm.posttrain.chat_template import render, reply_prompt, stop_ids
from jaxllm.posttrain.common import start_config
from jaxllm.posttrain.sft import sft_stage
from jaxllm.train.checkpoint import load_run
from jaxllm.train.loop import run
from tests.posttrain_fixtures import arithmetic, write_jsonl
from tests.test_hf import TINY, hf_logits, jax_logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ("alpha", "beta", "gamma", "über", "naïve", "日本", "😀", "tab\tx", "  indent", "def f(x):\n    return x", "42")
TEXTS = (
    "alpha beta gamma",
    "Hello wörld, naïve café: 日本語 😀 ✓",
    "  two leading spaces\n\n\tand a tab\n",
    "def f(x):\n    return x * 42\r\n",
    "unseen: Ωμέγα ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "   ",
)


def corpus(n: int = 300) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(24)) + "\n" for _ in range(n)]


def byte_level(specials: list[str]) -> tokenizers.Tokenizer:
    """GPT-2 style: byte-level BPE, no prefix space."""
    t = tokenizers.Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet)
    t.train_from_iterator(corpus(), trainer)
    return t


def sentencepiece_style() -> tokenizers.Tokenizer:
    """Llama 2 style, as transformers converts it: Metaspace with a prefix '▁', byte fallback <0xNN>, and the
    decoder that strips the prefix again."""
    t = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    t.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    data = json.loads(t.to_str())
    vocab = data["model"]["vocab"]
    vocab |= {f"<0x{b:02X}>": len(vocab) + b for b in range(256)}
    data["model"]["byte_fallback"] = True
    data["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    return tokenizers.Tokenizer.from_str(json.dumps(data))


def save(t: tokenizers.Tokenizer, directory, config: dict | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    t.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer_json")
    return {
        "gpt2": save(byte_level(["<|endoftext|>"]), root / "gpt2"),
        "spm": save(sentencepiece_style(), root / "spm", {"bos_token": "<s>", "eos_token": "</s>"}),
        "chatml": save(
            byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
            root / "chatml",
            {"bos_token": None, "eos_token": {"content": "<|im_end|>"}},
        ),
    }


def imported(directory, tmp_path) -> tok.HFTokenizer:
    """The tokenizer as `jaxllm.hf import` stores it."""
    stored, _, _ = hf_tokenizer.stored_tokenizer(directory, 10**6)
    (tmp_path / tok.HF_TOKENIZER_NAME).write_text(json.dumps(stored))
    return tok.load(tmp_path / tok.HF_TOKENIZER_NAME)


@pytest.mark.parametrize("kind", ["gpt2", "spm"])
def test_encodings_are_transformers_and_token_bytes_count_every_byte(kind, dirs, tmp_path):
    t = imported(dirs[kind], tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(dirs[kind])
    table = t.token_bytes()
    assert len(table) == t.vocab_size and table[t.bos] == table[t.eos] == 0
    for text in TEXTS:
        ids = t.encode(text)
        assert ids == reference(text, add_special_tokens=False)["input_ids"], text
        assert t.decode(ids) == reference.decode(ids)
        # the sentencepiece style drops a leading space and counts its prefix '▁' as one (a byte the text lacks)
        dummy = kind == "spm" and not text.startswith(" ")
        if kind == "gpt2" or dummy:
            assert t.decode(ids) == text
        assert table[ids].sum() == len(text.encode("utf-8")) + dummy, text
    assert t.encode_batch(list(TEXTS)) == [t.encode(x) for x in TEXTS]


def test_special_tokens_in_text_stay_text(dirs, tmp_path):
    t = imported(dirs["gpt2"], tmp_path)
    text = "a <|endoftext|> b <|user|>"
    ids = t.encode(text)
    assert t.eos not in ids and not set(ids) & {r[0] for r in t.chat.roles.values()}
    split = transformers.AutoTokenizer.from_pretrained(dirs["gpt2"], split_special_tokens=True)
    assert ids == split(text, add_special_tokens=False)["input_ids"] and t.decode(ids) == text


def test_special_ids_are_the_checkpoints_and_chat_tokens_are_added_unless_chatml(dirs, tmp_path):
    n = tokenizers.Tokenizer.from_file(str(dirs["gpt2"] / "tokenizer.json")).get_vocab_size()
    _, gained, n_tokens = hf_tokenizer.stored_tokenizer(dirs["gpt2"], n)
    assert n_tokens == n and gained == [n, n + 1, n + 2, n + 3]
    gpt2 = imported(dirs["gpt2"], tmp_path)
    eot = gpt2.special_id("<|endoftext|>")
    assert gpt2.bos == gpt2.eos == gpt2.pad == eot and gpt2.vocab_size == n + 4
    assert gpt2.chat.start == (eot,) and gpt2.chat.roles["user"] == (n + 1,) and gpt2.chat.end == (n + 3,)

    (tmp_path / "chatml").mkdir()
    chatml = imported(dirs["chatml"], tmp_path / "chatml")
    assert hf_tokenizer.stored_tokenizer(dirs["chatml"], 10**6)[1] == []  # its own chat tokens: nothing added
    opening, closing = chatml.special_id("<|im_start|>"), chatml.special_id("<|im_end|>")
    assert chatml.bos == chatml.eos == chatml.pad == closing  # no bos (null): documents start after an eos
    assert chatml.chat.start == () and stop_ids(chatml)[0] == closing
    assert chatml.chat.roles["assistant"] == (opening, *chatml.encode("assistant\n"))
    assert chatml.chat.end == (closing, *chatml.encode("\n"))

    (tmp_path / "spm").mkdir()
    spm = imported(dirs["spm"], tmp_path / "spm")
    assert (spm.bos, spm.eos) == (spm.special_id("<s>"), spm.special_id("</s>")) and spm.pad == spm.eos


def test_chatml_export_renders_as_transformers_chat_template(dirs, tmp_path):
    (tmp_path / "run").mkdir()
    t = imported(dirs["chatml"], tmp_path / "run")
    hf_tokenizer.write_hf_files(t, tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "über 42?"}]
    expected = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert reply_prompt(messages, t) == list(getattr(expected, "input_ids", expected))


def test_a_directory_without_a_tokenizer_is_one_line(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf.hf_config(TINY)))
    argv = ["import", f"--hf_dir={tmp_path / 'hf'}", f"--run_dir={tmp_path / 'run'}"]
    assert run_main(hf_command.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no tokenizer (none of tokenizer.json, tokenizer.model" in err, err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def gpt2_run(dirs, tmp_path_factory):
    """A random transformers GPT-2 (norms and biases randomised too) whose vocabulary is dirs['gpt2']'s
    tokenizer.json, imported: {'root', 'n' (its tokens), 'model', 'run' (the imported run's directory)}."""
    root = tmp_path_factory.mktemp("gpt2")
    t = tokenizers.Tokenizer.from_file(str(dirs["gpt2"] / "tokenizer.json"))
    n, eot = t.get_vocab_size(), t.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(
        vocab_size=n, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=eot, eos_token_id=eot
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(root / "hf")
    save(t, root / "hf")
    hf_command.import_(root / "hf", root / "imported")
    return {"root": root, "n": n, "model": model, "run": root / "imported"}


def sample_tokens(t: tok.Tokenizer) -> np.ndarray:
    return np.array([t.encode(TEXTS[1] + TEXTS[3])[:20], t.encode(TEXTS[3] + TEXTS[4])[:20]])


def float32_logits(loaded, tokens: np.ndarray) -> np.ndarray:
    return jax_logits(replace(loaded.cfg.model, kernels="reference", compute_dtype="float32"), loaded.params, tokens)


CHAT = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5."}]


def test_gpt2_imports_with_its_tokenizer_and_the_chat_tokens_and_exports_back(gpt2_run, tmp_path):
    n, loaded = gpt2_run["n"], load_run(gpt2_run["run"])
    t = loaded.tokenizer
    assert isinstance(t, tok.HFTokenizer) and loaded.cfg.model.vocab_size == t.vocab_size == n + 4
    tokens = sample_tokens(t)
    logits = float32_logits(loaded, tokens)
    np.testing.assert_allclose(logits[..., :n], hf_logits(gpt2_run["model"], tokens), atol=1e-4)
    # the chat tokens' rows are the mean embedding: with tied embeddings, their logits are the mean logit
    np.testing.assert_allclose(logits[..., n:], logits[..., :n].mean(-1, keepdims=True).repeat(4, -1), atol=1e-4)
    system, user, assistant, end = (t.special_id(x) for x in tok.CHAT_TOKENS)
    rendered = render(CHAT, t)
    assert rendered.ids == [t.bos, user, *t.encode(CHAT[0]["content"]), end, assistant, *t.encode("5."), end]
    assert stop_ids(t) == (end, t.eos, t.bos)

    assert run_main(hf_command.main, ["export", f"--run_dir={gpt2_run['run']}", f"--out={tmp_path / 'out'}"]) == 0
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (reference.bos_token, reference.eos_token) == ("<|endoftext|>", "<|endoftext|>")
    for text in TEXTS:
        assert reference(text, add_special_tokens=False)["input_ids"] == t.encode(text)
    expected = reference.apply_chat_template(CHAT, tokenize=True)
    assert list(getattr(expected, "input_ids", expected)) == rendered.ids
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    np.testing.assert_allclose(hf_logits(exported, tokens), logits, atol=1e-4)

    hf_command.import_(tmp_path / "out", tmp_path / "again")  # a jaxllm export has the chat tokens: no growth
    again = load_run(tmp_path / "again")
    assert again.cfg.model.vocab_size == n + 4 and again.tokenizer.chat == t.chat


@pytest.mark.slow
def test_an_imported_gpt2_fine_tunes_on_chats_and_exports(gpt2_run, tmp_path):
    conversations = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a, _ in arithmetic()
        ],
    )
    short = {"steps": 2, "batch_size": 4, "log_every": 1, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2}
    sft = replace(
        load_run(gpt2_run["run"]).saved,
        name="sft",
        train=TrainConfig(**short, sample_tokens=4, peak_tflops=1.0, init_from=str(gpt2_run["run"])),
        posttrain=PosttrainConfig(stage="sft", conversations=(conversations,), val_fraction=0.2, seq_len=24),
    )
    summary = run(start_config(sft), tmp_path / "sft", progress=False, make_stage=sft_stage)
    assert summary["step"] == 2 and np.isfinite(summary["val_loss"])
    assert run_main(hf_command.main, ["export", f"--run_dir={tmp_path / 'sft'}", f"--out={tmp_path / 'out'}"]) == 0
    tuned = load_run(tmp_path / "sft")
    tokens = sample_tokens(tuned.tokenizer)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    np.testing.assert_allclose(hf_logits(exported, tokens), float32_logits(tuned, tokens), atol=1e-4)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    expected = reference.apply_chat_template(CHAT, tokenize=True)
    assert list(getattr(expected, "input_ids", expected)) == render(CHAT, tuned.tokenizer).ids
