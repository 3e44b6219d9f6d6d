"""Exact and near-duplicate detection: normalised-content hashes, and MinHash over word n-grams with LSH banding.

Both indexes are streaming and keep the first document of each group in input order: a document is dropped when
its content hash, or one of its LSH band keys, was seen on an earlier document. Unlike a union-find over all
pairs, a document is only dropped for resembling an earlier one, never through a chain of other documents.
Signatures are computed where documents are cleaned (worker processes); the indexes live in the parent and grow
by about 1.5 KB a document (14 band keys plus the content hash in Python dicts), the one cost not bounded by
the streaming design.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

from jaxllm.config import ConfigError
from jaxllm.config.clean import DedupConfig

SHINGLE_WORD_RE = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) to combine word hashes into n-gram hashes
_BLOCK = 4096  # shingles hashed at a time: bounds the (shingles x permutations) matrix to a few MB


def exact_key(text: str) -> bytes:
    """Hash of the text lower-cased with whitespace runs collapsed: reformatting alone does not make it new."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


class MinHasher:
    """MinHash signatures with multiply-add-shift hashing ((a*x + b) mod 2^64) >> 32, a 2-independent family for
    32-bit keys that needs no modulo, so numpy's wrapping uint64 arithmetic computes it exactly."""

    def __init__(self, cfg: DedupConfig):
        if cfg.bands * cfg.rows != cfg.num_perm:
            raise ConfigError(
                f"data.clean.dedup: bands={cfg.bands} x rows={cfg.rows} must equal num_perm={cfg.num_perm}: "
                "change one of them"
            )
        rng = np.random.default_rng(cfg.seed)
        self.a = rng.integers(0, 2**64 - 1, size=cfg.num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, 2**64 - 1, size=cfg.num_perm, dtype=np.uint64, endpoint=True)
        self.cfg = cfg

    def shingles(self, text: str) -> np.ndarray:
        """Distinct 32-bit hashes of the lower-cased word n-grams (one shingle of all words for shorter texts)."""
        words = SHINGLE_WORD_RE.findall(text.lower())
        if not words:
            return np.zeros(0, np.uint64)
        table = {w: zlib.crc32(w.encode("utf-8")) for w in set(words)}
        hashes = np.fromiter((table[w] for w in words), np.uint64, len(words))
        n = min(self.cfg.ngram, len(words))
        combined = np.zeros(len(words) - n + 1, np.uint64)
        for k in range(n):
            combined = combined * _MIX + hashes[k : len(words) - n + 1 + k]
        return np.unique((combined ^ (combined >> np.uint64(32))) & np.uint64(0xFFFFFFFF))

    def signature(self, text: str) -> np.ndarray | None:
        """(num_perm,) uint32 minimum hash per permutation, or None for a text without words."""
        shingles = self.shingles(text)
        if not len(shingles):
            return None
        mins = np.full(self.cfg.num_perm, np.iinfo(np.uint64).max, np.uint64)
        for start in range(0, len(shingles), _BLOCK):
            block = shingles[start : start + _BLOCK, None]
            np.minimum(mins, ((block * self.a + self.b) >> np.uint64(32)).min(axis=0), out=mins)
        return mins.astype(np.uint32)

    def band_keys(self, text: str) -> tuple[int, ...]:
        """One 64-bit key per band (band index mixed in); empty for a text without words."""
        signature = self.signature(text)
        if signature is None:
            return ()
        rows = signature.reshape(self.cfg.bands, self.cfg.rows)
        return tuple(
            int.from_bytes(
                hashlib.blake2b(band.to_bytes(2, "little") + rows[band].tobytes(), digest_size=8).digest(), "little"
            )
            for band in range(self.cfg.bands)
        )


class FirstSeen:
    """Maps keys to the id of the first document that had any of them."""

    def __init__(self):
        self.first: dict = {}

    def check_and_add(self, doc_id: str, keys) -> str | None:
        """The id of an earlier document sharing a key (this one is its duplicate), else None; records the keys."""
        earlier = next((self.first[k] for k in keys if k in self.first), None)
        for key in keys:
            self.first.setdefault(key, doc_id)
        return earlier
