"""Exact and MinHash-LSH near dedup on planted duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from jaxllm.config import ConfigError
from jaxllm.config.clean import DedupConfig
from jaxllm.data.dedup import FirstSeen, MinHasher, exact_key


def essay(seed: int, n: int = 300) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"w{i}" for i in rng.integers(0, 5000, n)]


def test_exact_key_ignores_case_and_whitespace_only():
    assert exact_key("Hello   World\n") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello, world")


def test_minhash_estimates_jaccard():
    hasher = MinHasher(DedupConfig())
    a = " ".join(essay(0))
    assert np.array_equal(hasher.signature(a), hasher.signature(a.upper()))
    words = essay(0)
    words[150:160] = essay(1, 10)  # 14 of 296 shingles differ on each side: Jaccard 282/310 = 0.91
    agreement = np.mean(hasher.signature(a) == hasher.signature(" ".join(words)))
    assert abs(agreement - 282 / 310) < 0.08  # three standard deviations of a 112-permutation estimate
    assert np.mean(hasher.signature(a) == hasher.signature(" ".join(essay(2)))) == 0.0
    assert hasher.signature("... !!!") is None
    assert len(hasher.band_keys(a)) == 14


def test_lsh_finds_planted_near_duplicates_and_keeps_the_first():
    hasher, index = MinHasher(DedupConfig()), FirstSeen()
    originals = [essay(seed) for seed in range(20)]
    docs = {f"doc{seed}": " ".join(words) for seed, words in enumerate(originals)}
    for seed in range(5):  # near copies: 3 of 300 words replaced, Jaccard about 0.95
        words = list(originals[seed])
        words[100], words[200], words[250] = "changed", "words", "here"
        docs[f"copy{seed}"] = " ".join(words)
    verdicts = {doc_id: index.check_and_add(doc_id, hasher.band_keys(text)) for doc_id, text in docs.items()}
    assert verdicts == {**{f"doc{s}": None for s in range(20)}, **{f"copy{s}": f"doc{s}" for s in range(5)}}


def test_bands_times_rows_must_equal_permutations():
    with pytest.raises(ConfigError, match="bands=10 x rows=8 must equal num_perm=112"):
        MinHasher(DedupConfig(bands=10))
