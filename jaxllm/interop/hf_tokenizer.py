"""A transformers tokenizer.json into and out of a run: the one file jaxllm.tokenizer.HFTokenizer reads, made by
`python -m jaxllm.hf import`, and the tokenizer.json + tokenizer_config.json that `export` writes back for
transformers' AutoTokenizer.

Special tokens are the checkpoint's own: bos, eos and pad as its tokenizer_config.json (or special_tokens_map.json)
names them, else its added tokens of the usual names (GPT-2's <|endoftext|> is both bos and eos). Without a bos
(Qwen's config says null), documents start with the eos, the separator its pretraining put between documents; pad
defaults to the eos (padding is never trained on nor attended to). Chat: a checkpoint with ChatML tokens keeps them
(HFTokenizer renders turns as ChatML with them); any other gains jaxllm's four chat tokens as added special tokens,
at the ids after its vocabulary, and the model gains their rows (jaxllm.interop.hf.add_token_rows).

A run with jaxllm's own sentencepiece BPE exports a tokenizer.json built from its model (sentencepiece_tokenizer):
the same ids for every text, byte fallback included, and the same special and chat tokens, so transformers loads a
tokenizer and a chat template for it too. Not for arbitrary sentencepiece models (a dummy prefix or a normaliser
other than identity): export refuses one whose encodings it cannot reproduce.
"""

from __future__ import annotations

import json
import pathlib

import tokenizers
from tokenizers import decoders, models, normalizers

from jaxllm.config import ConfigError
from jaxllm.tokenizer import CHAT_TOKENS, CHATML_TOKENS, SPECIALS, BPETokenizer, HFTokenizer, Tokenizer

BOS_NAMES = ("<|begin_of_text|>", "<s>", "<|endoftext|>")
EOS_NAMES = ("<|end_of_text|>", "</s>", "<|endoftext|>")
# what HFTokenizer.chat renders, as a transformers chat template, so apply_chat_template gives the same ids
CHAT_TEMPLATES = {
    True: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    False: "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
}


def _named_specials(hf_dir: pathlib.Path) -> dict:
    """{'bos', 'eos', 'pad': token string or None} as far as tokenizer_config.json (over special_tokens_map.json)
    names them; a key is absent where neither file has it."""
    named = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (hf_dir / name).is_file():
            config = json.loads((hf_dir / name).read_text())
            for key in ("bos", "eos", "pad"):
                if f"{key}_token" in config:
                    value = config[f"{key}_token"]
                    named[key] = value["content"] if isinstance(value, dict) else value
    return named


def stored_tokenizer(hf_dir: pathlib.Path, model_rows: int) -> tuple[dict, list[int], int]:
    """The content of the HFTokenizer file for hf_dir's tokenizer.json, the ids of the chat tokens it gained (none
    for a ChatML checkpoint or a jaxllm export), and how many tokens it had before."""
    try:
        hf = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    except Exception as e:  # a foreign file: a bad input, named with its cause
        raise ConfigError(
            f"{hf_dir}/tokenizer.json cannot be read by tokenizers {tokenizers.__version__} "
            f"({str(e).splitlines()[0][:200]}): re-save it with a current transformers"
        ) from None
    n_tokens = hf.get_vocab_size(with_added_tokens=True)
    if n_tokens > model_rows:
        raise ConfigError(
            f"{hf_dir}/tokenizer.json has {n_tokens} tokens but the model only {model_rows} embedding rows: "
            "the tokenizer belongs to another checkpoint"
        )
    added = {t.content for t in hf.get_added_tokens_decoder().values()}
    named = _named_specials(hf_dir)
    eos = named.get("eos") or next((t for t in EOS_NAMES if t in added), None)
    if eos is None:
        raise ConfigError(
            f"{hf_dir} names no eos token and its tokenizer.json has none of {list(EOS_NAMES)}: "
            'add "eos_token": "..." to its tokenizer_config.json'
        )
    bos = (named["bos"] if "bos" in named else next((t for t in BOS_NAMES if t in added), None)) or eos
    if None in map(hf.token_to_id, CHATML_TOKENS):
        hf.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in CHAT_TOKENS])
    gained = [i for i in map(hf.token_to_id, CHAT_TOKENS) if i is not None and i >= n_tokens]
    stored = {"tokenizer": json.loads(hf.to_str()), "bos": bos, "eos": eos, "pad": named.get("pad") or eos}
    return stored, gained, n_tokens


# texts an exported tokenizer.json must encode as the sentencepiece model does: spaces, runs of them, newlines and
# tabs (user symbols), digits, typed special tokens (text), and characters outside any small vocabulary (bytes)
PROBES = (
    "def f(x):\n    return x * 42\r\n",
    " leading space,  two spaces\tand a tab\n\n",
    "Hello wörld, naïve café: 日本語 😀 ✓ Ωμέγα ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "<|user|> typed <bos> <0x41> \u2581 is text",
    "1234567890 + 98765 =",
)


def sentencepiece_tokenizer(tokenizer: BPETokenizer) -> dict:
    """A stored tokenizer ({'tokenizer': tokenizer.json content, 'bos', 'eos', 'pad'}, as HFTokenizer's file) that
    encodes as the sentencepiece model does. sentencepiece's BPE merges the adjacent pair whose joined piece scores
    highest, leftmost first, over the whole text (user symbols, '\\n' and '\\t', never merge); a BPE model whose
    merges are every split of every piece into two pieces, ranked by the joined piece's score, merges the same way.
    Spaces become '▁' (no dummy prefix); a character outside the vocabulary falls back to its UTF-8 bytes. The
    special tokens have jaxllm's names (jaxllm.tokenizer.SPECIALS: the .model file calls <bos> '<s>')."""
    sp = tokenizer.sp
    pieces = [SPECIALS[i] if i < len(SPECIALS) else sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    byte_ids = [i for i in range(len(pieces)) if sp.is_byte(i)]
    if len(byte_ids) != 256:
        raise ConfigError(f"{tokenizer.path} has no byte fallback: jaxllm exports a tokenizer.json for its own models")
    # meta pieces (control, unknown, user-defined) precede the bytes; normal pieces follow them
    normal = {p: i for i, p in enumerate(pieces) if i > byte_ids[-1] and not sp.is_unused(i)}
    merges = sorted(
        ((p[:k], p[k:]) for p in normal for k in range(1, len(p)) if p[:k] in normal and p[k:] in normal),
        key=lambda pair: (-sp.get_score(normal["".join(pair)]), normal["".join(pair)]),
    )
    hf = tokenizers.Tokenizer(
        models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token=pieces[sp.unk_id()], byte_fallback=True)
    )
    hf.normalizer = normalizers.Replace(" ", "\u2581")
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    meta = [
        tokenizers.AddedToken(p, special=sp.is_control(i) or sp.is_unknown(i), normalized=False)
        for i, p in enumerate(pieces[: byte_ids[0]])
    ]
    hf.add_tokens([t for t in meta if not t.special])
    hf.add_special_tokens([t for t in meta if t.special])
    hf.encode_special_tokens = True  # as HFTokenizer encodes: typed special tokens are text
    for text in PROBES:
        if hf.encode(text, add_special_tokens=False).ids != sp.encode(text):
            raise ConfigError(
                f"{tokenizer.path}: a tokenizer.json cannot reproduce this sentencepiece model's encoding of {text!r} "
                "(a dummy prefix or a normaliser other than identity?): jaxllm exports tokenizer.json for the "
                "models it trains (jaxllm.tokenizer.train_bpe)"
            )
    hf.encode_special_tokens = False  # not stored: transformers finds special tokens in its chat template's text
    names = {k: pieces[i] for k, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("pad", sp.pad_id()))}
    return {"tokenizer": json.loads(hf.to_str())} | names


def write_hf_files(tokenizer: Tokenizer, out: pathlib.Path) -> None:
    """tokenizer.json and a tokenizer_config.json (special tokens, chat template) that AutoTokenizer loads, for an
    imported tokenizer.json (HFTokenizer) or jaxllm's sentencepiece BPE; the generic PreTrainedTokenizerFast class
    uses tokenizer.json as it is, so it encodes as jaxllm does."""
    if isinstance(tokenizer, HFTokenizer):
        stored, chatml = json.loads(tokenizer.path.read_text()), tokenizer.chatml
    else:
        stored, chatml = sentencepiece_tokenizer(tokenizer), False
    (out / "tokenizer.json").write_text(json.dumps(stored["tokenizer"], ensure_ascii=False))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{k}_token": stored[k] for k in ("bos", "eos", "pad")},
        "chat_template": CHAT_TEMPLATES[chatml],
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
