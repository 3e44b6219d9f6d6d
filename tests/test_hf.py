"""Hugging Face parity: jaxllm -> safetensors -> transformers gives jaxllm's logits, and back (float32, 1e-4); the
tokenizer.json exported for jaxllm's sentencepiece BPE encodes and renders chats as jaxllm does in AutoTokenizer.

Needs torch and transformers (requirements-dev.txt; CI installs them); skipped cleanly without them."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm import hf as hf_command
from jaxllm import tokenizer as tok
from jaxllm.config import ModelConfig
from jaxllm.interop import hf, hf_tokenizer
from jaxllm.model.transformer import Transformer
from jaxllm.posttrain.chat_template import render, reply_prompt
from tests.conftest import CORPUS_FILES, stdlib_root

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# the reference kernels: the portable path (the other kernel sets equal it: test_kernels.py)
TINY = ModelConfig(
    vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32, kernels="reference", compute_dtype="float32"
)
FAMILIES = {
    "gpt2": TINY,
    "gpt2-untied": dataclasses.replace(TINY, tie_embeddings=False, mlp_hidden=48),
    "llama-gqa": dataclasses.replace(TINY, family="llama", n_kv_head=2, tie_embeddings=False, rope_theta=500000.0),
    "llama-tied": dataclasses.replace(TINY, family="llama", tie_embeddings=True),
}


def jax_logits(cfg: ModelConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
    with nnx.use_eager_sharding(False):
        graphdef, state = nnx.split(Transformer(cfg, nnx.Rngs(0)), nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    logits, _ = nnx.merge(graphdef, state)(jnp.asarray(tokens))
    return np.asarray(logits)


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def random_params(cfg: ModelConfig) -> dict:
    with nnx.use_eager_sharding(False):
        params = nnx.to_pure_dict(nnx.state(Transformer(cfg, nnx.Rngs(3)), nnx.Param))
    # zero-initialised biases and unit norm scales would hide a mix-up: give every parameter random values
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", FAMILIES)
def test_export_loads_in_transformers_with_equal_logits(name, tmp_path):
    cfg = FAMILIES[name]
    params = random_params(cfg)
    hf.write_safetensors(tmp_path / "model.safetensors", hf.to_hf_tensors(params, cfg))
    (tmp_path / "config.json").write_text(json.dumps(hf.hf_config(cfg)))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    expected_class = "GPT2LMHeadModel" if cfg.family == "gpt2" else "LlamaForCausalLM"
    assert type(model).__name__ == expected_class
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24))
    np.testing.assert_allclose(hf_logits(model, tokens), jax_logits(cfg, params, tokens), atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_import_of_random_transformers_model_gives_its_logits(name, tmp_path):
    cfg = FAMILIES[name]
    hf_cfg = transformers.AutoConfig.for_model(**hf.hf_config(cfg))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():  # random norms and biases too, not their neutral initial values
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    imported_cfg, params = hf.load_hf(tmp_path)
    assert imported_cfg == dataclasses.replace(cfg, kernels="auto", compute_dtype="auto")  # runtime choices
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 24))
    np.testing.assert_allclose(jax_logits(cfg, params, tokens), hf_logits(model, tokens), atol=1e-4)


def test_pickled_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf.hf_config(TINY)))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(hf.ConfigError, match="safetensors only"):
        hf.load_hf(tmp_path)


# byte fallback (characters no 512-token vocabulary of Python source holds), runs of spaces, newlines, tabs, digits
TEXTS = (
    "def f(x):\n    return x * 42\r\n",
    "  two leading spaces\n\n\tand a tab\n",
    "Hello wörld, naïve café: 日本語 😀 ✓",
    "unseen: Ωμέγα ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "   ",
)


def test_sentencepiece_export_is_the_same_tokenizer_in_transformers(tmp_path):
    lines = [line for name in CORPUS_FILES for line in (stdlib_root() / name).read_text().splitlines()]
    t = tok.train_bpe(iter(lines), 512, tmp_path / "tokenizer.model")
    hf_tokenizer.write_hf_files(t, tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = reference(text, add_special_tokens=False)["input_ids"]
        assert ids == t.encode(text), text
        assert reference.decode(ids) == t.decode(ids) == text
    assert any(t.sp.is_byte(i) for i in t.encode(TEXTS[3]))  # the byte fallback was exercised
    assert [reference.convert_tokens_to_ids(x) for x in tok.CHAT_TOKENS] == [4, 5, 6, 7]
    assert (reference.bos_token_id, reference.eos_token_id, reference.pad_token_id) == (t.bos, t.eos, t.pad)
    assert (reference.bos_token, reference.eos_token, reference.pad_token) == ("<bos>", "<eos>", "<pad>")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Wie viel ist 2 + 3? 😀"}]
    prompt = reference.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    assert list(getattr(prompt, "input_ids", prompt)) == reply_prompt(chat, t)
    whole = chat + [{"role": "assistant", "content": "5.\n"}]
    rendered = reference.apply_chat_template(whole, tokenize=True)
    assert list(getattr(rendered, "input_ids", rendered)) == render(whole, t).ids
    # re-imported, a jaxllm export is read through the run's own sentencepiece model, not the copy for transformers
    (tmp_path / "jaxllm.json").write_text("{}")
    assert hf_command._tokenizer_file(tmp_path) == "tokenizer.model"
