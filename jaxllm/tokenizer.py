"""Tokenizers: sentencepiece BPE with byte fallback (the default), or characters (for tiny char-level models).

Both round-trip exactly: decode(encode(text)) == text for any text, whitespace and newlines included (the BPE
tokenizer uses identity normalisation, no dummy prefix, and byte fallback for anything outside its vocabulary).
Special tokens have fixed ids in both kinds, and are never produced from text by encode (they are control
symbols); the chat template inserts them by id:
  0 <pad>  1 <unk>  2 <bos> (starts every document)  3 <eos>
  4 <|system|>  5 <|user|>  6 <|assistant|>  7 <|end|> (end of a chat turn)
A tokenizer is saved as one file: a sentencepiece model (`tokenizer.model`) or a JSON list of characters.
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from jaxllm.config import ConfigError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>") + CHAT_TOKENS
# sentencepiece would drop newlines and tabs as whitespace; as user symbols they stay. Indentation runs need no
# symbol of their own: allow_whitespace_only_pieces learns them (same 3.21 bytes/token on the stdlib either way).
WHITESPACE_SYMBOLS = ("\n", "\t")


class Tokenizer:
    """The interface both kinds share."""

    vocab_size: int
    path: pathlib.Path

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


def train_bpe(lines: Iterator[str], vocab_size: int, out: pathlib.Path) -> BPETokenizer:
    """Trains on an iterator of lines (without their newline) and writes `out` (a .model file)."""
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_prefix=str(out.with_suffix("")),
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
    (out.with_suffix(".vocab")).unlink(missing_ok=True)
    return BPETokenizer(out)


def train_char(text: Iterable[str], out: pathlib.Path) -> CharTokenizer:
    chars = sorted(set().union(*map(set, text)))
    out.write_text(json.dumps(chars))
    return CharTokenizer(out)


def load(path: pathlib.Path) -> Tokenizer:
    path = pathlib.Path(path)
    return CharTokenizer(path) if path.suffix == ".json" else BPETokenizer(path)
