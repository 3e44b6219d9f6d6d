"""Tokenizers: sentencepiece BPE with byte fallback (the default), characters (for tiny char-level models), or an
imported checkpoint's transformers `tokenizer.json` (read with Hugging Face `tokenizers`).

jaxllm's two kinds round-trip exactly: decode(encode(text)) == text for any text, whitespace and newlines included
(the BPE tokenizer uses identity normalisation, no dummy prefix, and byte fallback for anything outside its
vocabulary). Their special tokens have fixed ids:
  0 <pad>  1 <unk>  2 <bos> (starts every document)  3 <eos>
  4 <|system|>  5 <|user|>  6 <|assistant|>  7 <|end|> (end of a chat turn)
An imported tokenizer.json has its checkpoint's own (`pad`, `bos`, `eos` and `chat` on every tokenizer say which):
code that needs a special id reads it from the tokenizer in use. In every kind, special tokens are control symbols
that encode never produces from text; the chat template inserts them by id.
A tokenizer is saved as one file: a sentencepiece model (`tokenizer.model`), a JSON list of characters, or
`hf_tokenizer.json` (the tokenizer.json with the names of its bos, eos and pad tokens).
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import re
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm
import tokenizers

from jaxllm.config import ConfigError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>") + CHAT_TOKENS
ROLES = ("system", "user", "assistant")  # the chat roles, in CHAT_TOKENS' order
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
HF_TOKENIZER_NAME = "hf_tokenizer.json"
# sentencepiece would drop newlines and tabs as whitespace; as user symbols they stay. Indentation runs need no
# symbol of their own: allow_whitespace_only_pieces learns them (same 3.21 bytes/token on the stdlib either way).
WHITESPACE_SYMBOLS = ("\n", "\t")


@dataclasses.dataclass(frozen=True)
class ChatTokens:
    """The chat template's markup as token ids (jaxllm.posttrain.chat_template renders its one layout with them): a
    conversation opens with `start`, a turn of role r with `roles[r]`, and every turn closes with `end`; a sampled
    reply stops at end[0]."""

    start: tuple[int, ...]
    roles: dict[str, tuple[int, ...]]
    end: tuple[int, ...]


class Tokenizer:
    """The interface every kind shares. The class attributes are jaxllm's fixed special ids; HFTokenizer sets its
    checkpoint's own."""

    vocab_size: int
    path: pathlib.Path
    pad, bos, eos = PAD, BOS, EOS
    chat = ChatTokens(
        start=(BOS,),
        roles={r: (SPECIALS.index(t),) for r, t in zip(ROLES, CHAT_TOKENS)},
        end=(SPECIALS.index("<|end|>"),),
    )

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        """(vocab,) int: UTF-8 bytes each token stands for (0 for specials): bits-per-byte counts with it."""
        raise NotImplementedError

    def special_id(self, token: str) -> int:
        return SPECIALS.index(token)


class BPETokenizer(Tokenizer):
    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=2)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) >= len(SPECIALS)])

    def token_bytes(self) -> np.ndarray:
        sizes = np.zeros(self.vocab_size, np.int64)
        for i in range(len(SPECIALS), self.vocab_size):
            piece = self.sp.id_to_piece(i)
            sizes[i] = 1 if self.sp.is_byte(i) else len(piece.replace("\u2581", " ").encode("utf-8"))
        return sizes


class CharTokenizer(Tokenizer):
    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self.chars: list[str] = json.loads(self.path.read_text())
        self.index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}
        self.vocab_size = len(SPECIALS) + len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this character tokenizer's vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i - len(SPECIALS)] for i in map(int, ids) if i >= len(SPECIALS))

    def token_bytes(self) -> np.ndarray:
        return np.array([0] * len(SPECIALS) + [len(c.encode("utf-8")) for c in self.chars], np.int64)


class HFTokenizer(Tokenizer):
    """A transformers tokenizer.json, stored by `jaxllm.hf import` as one file: {"tokenizer": the tokenizer.json,
    "bos", "eos", "pad": those tokens' strings}. Byte-level BPE (GPT-2, Llama 3, SmolLM) and sentencepiece-style
    (Metaspace or a "▁" Replace decoder, byte fallback <0xNN>: Llama 2) tokenizers are read; decode(encode(text))
    is text except where the tokenizer itself is lossy (a sentencepiece-style one drops a leading space)."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        stored = json.loads(self.path.read_text())
        self.hf = tokenizers.Tokenizer.from_str(json.dumps(stored["tokenizer"]))
        # special tokens are control ids that text never produces (typed "<|im_end|>" cannot end a turn): the
        # encoding of transformers' AutoTokenizer with split_special_tokens=True
        self.hf.encode_special_tokens = True
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        self.pad, self.bos, self.eos = (self.special_id(stored[k]) for k in ("pad", "bos", "eos"))
        decoder = _types(stored["tokenizer"].get("decoder"))
        self.byte_level = "ByteLevel" in decoder
        if not self.byte_level and not {"Metaspace", "Replace", "ByteFallback"} & decoder:
            raise ConfigError(
                f"{self.path}: a tokenizer.json with decoder {sorted(decoder) or 'none'}; jaxllm reads byte-level "
                "BPE (a ByteLevel decoder) and sentencepiece-style ones (Metaspace or Replace, byte fallback)"
            )
        self.byte_fallback = bool(stored["tokenizer"]["model"].get("byte_fallback"))
        self.chatml = None not in map(self.hf.token_to_id, CHATML_TOKENS)
        self.chat = self._chat_tokens()

    def _chat_tokens(self) -> ChatTokens:
        ids = {t: self.hf.token_to_id(t) for t in CHATML_TOKENS + CHAT_TOKENS}
        if self.chatml:
            # ChatML (Qwen, SmolLM2): a turn opens with '<|im_start|>role\n' and closes with '<|im_end|>\n', as the
            # checkpoint's own chat template writes them; that template puts no <bos> before the first turn
            opening, closing = ids["<|im_start|>"], ids["<|im_end|>"]
            roles = {r: (opening, *self.encode(f"{r}\n")) for r in ROLES}
            return ChatTokens(start=(), roles=roles, end=(closing, *self.encode("\n")))
        missing = [t for t in CHAT_TOKENS if ids[t] is None]
        if missing:
            raise ConfigError(
                f"{self.path} has neither ChatML tokens {list(CHATML_TOKENS)} nor jaxllm's chat tokens {missing}: "
                "import the checkpoint with python -m jaxllm.hf import, which adds them"
            )
        roles = {r: (ids[t],) for r, t in zip(ROLES, CHAT_TOKENS)}
        return ChatTokens(start=(self.bos,), roles=roles, end=(ids["<|end|>"],))

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_bytes(self) -> np.ndarray:
        sizes = np.zeros(self.vocab_size, np.int64)
        alphabet = set(tokenizers.pre_tokenizers.ByteLevel.alphabet())  # GPT-2's byte-to-unicode characters
        for token, i in self.hf.get_vocab(with_added_tokens=False).items():
            if self.byte_level:  # each character of the alphabet stands for one byte; any other is itself
                sizes[i] = sum(1 if c in alphabet else len(c.encode("utf-8")) for c in token)
            elif self.byte_fallback and re.fullmatch("<0x[0-9A-F]{2}>", token):
                sizes[i] = 1
            else:  # a prefix '▁' that Metaspace adds to a text's first piece counts one byte the text lacks
                sizes[i] = len(token.replace("\u2581", " ").encode("utf-8"))
        for i, added in self.hf.get_added_tokens_decoder().items():  # added tokens are stored as plain text
            sizes[i] = 0 if added.special else len(added.content.encode("utf-8"))
        return sizes

    def special_id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise ConfigError(f"{self.path}: the special token {token!r} is not in this tokenizer's vocabulary")
        return i


def _types(node) -> set[str]:
    """Every component type named in a tokenizer.json section (a decoder may be a Sequence of others)."""
    if isinstance(node, dict):
        return ({node["type"]} if "type" in node else set()) | set().union(*map(_types, node.values()))
    if isinstance(node, list):
        return set().union(*map(_types, node))
    return set()


def train_bpe(lines: Iterator[str], vocab_size: int, out: pathlib.Path) -> BPETokenizer:
    """Trains on an iterator of lines (without their newline) and writes `out` (a .model file)."""
    # Into memory, not by model_prefix: the model would record that path, and the same data must give the same bytes.
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=16384,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            control_symbols=list(CHAT_TOKENS),
            user_defined_symbols=list(WHITESPACE_SYMBOLS),
            num_threads=2,
            minloglevel=2,
            train_extremely_large_corpus=False,
        )
    except RuntimeError as e:
        if "Vocabulary size" in str(e):
            raise ConfigError(
                f"model.vocab_size={vocab_size} is larger than this corpus supports "
                f"({str(e).strip().splitlines()[-1]}); lower model.vocab_size"
            ) from None
        raise
    out.write_bytes(model.getvalue())
    return BPETokenizer(out)


def train_char(text: Iterable[str], out: pathlib.Path) -> CharTokenizer:
    chars = sorted(set().union(*map(set, text)))
    out.write_text(json.dumps(chars))
    return CharTokenizer(out)


def load(path: pathlib.Path) -> Tokenizer:
    path = pathlib.Path(path)
    if path.name == HF_TOKENIZER_NAME:
        return HFTokenizer(path)
    return CharTokenizer(path) if path.suffix == ".json" else BPETokenizer(path)
