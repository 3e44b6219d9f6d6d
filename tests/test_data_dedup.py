"""Exact and near dedup: planted near-duplicates at known Jaccard, verification of candidates, components, and the
choice of the kept document."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from jaxllm.bench.dedup import bench_dedup, dedup_table, planted_pair
from jaxllm.config import ConfigError
from jaxllm.config.clean import DedupConfig
from jaxllm.data.components import Components, star_components, star_round
from jaxllm.data.dedup import (
    DedupIndex,
    MinHasher,
    band_rows,
    candidate_edges,
    cluster_stats,
    exact_key,
    first_of_equal,
    join_components,
    verified_pairs,
    verify_edges,
)


def essay(seed: int, n: int = 300) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"w{i}" for i in rng.integers(0, 5000, n)]


def word_5gram_jaccard(a: str, b: str) -> float:
    """Exact Jaccard of the texts' sets of lower-cased word 5-grams (the shingles MinHash estimates)."""
    grams = [
        {tuple(words[i : i + 5]) for i in range(len(words) - 4)}
        for words in (re.findall(r"\w+", text.lower()) for text in (a, b))
    ]
    return len(grams[0] & grams[1]) / len(grams[0] | grams[1])


def random_signatures(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, (n, 112), dtype=np.uint32)


def decide(signatures, keys=None, cfg=DedupConfig(), spill_dir=None, components=Components()):
    index = DedupIndex(cfg, spill_dir, components)
    keys = keys or [i.to_bytes(16, "little") for i in range(len(signatures))]
    index.add(keys, list(signatures))
    verdicts = index.verdicts()
    index.close()
    return verdicts


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


def test_planted_pairs_have_the_jaccard_they_claim():
    rng = np.random.default_rng(7)
    for target in (0.95, 0.85, 0.7, 0.45, 0.25):
        original, copy, claimed = planted_pair(rng, target)
        assert word_5gram_jaccard(" ".join(original), " ".join(copy)) == claimed
        assert abs(claimed - target) < 0.05 and claimed < 1


def test_planted_near_duplicates_merge_at_high_jaccard_only():
    """Twelve pairs at J 0.86-0.97 (an LSH miss at J >= 0.86 has a probability below 1%, a rejection by the
    estimate below 0.1%) and twelve at J 0.2-0.45 (a merge needs an estimate 5 spreads above): the high ones
    merge, each with its original kept, and the low ones do not."""
    rng = np.random.default_rng(0)
    hasher = MinHasher(DedupConfig())
    targets = list(np.linspace(0.86, 0.97, 12)) + list(np.linspace(0.2, 0.45, 12))
    texts, similarity = [], []
    for target in targets:
        original, copy, j = planted_pair(rng, target)
        texts += [" ".join(original), " ".join(copy)]
        similarity.append(word_5gram_jaccard(texts[-2], texts[-1]))
    verdicts = decide([hasher.signature(t) for t in texts], [exact_key(t) for t in texts])
    assert min(similarity[:12]) >= 0.8 and max(similarity[12:]) < 0.5
    expected = np.arange(48)
    expected[1:24:2] -= 1  # the copies of the twelve high pairs, each kept as its original
    assert verdicts.kept_as.tolist() == expected.tolist()
    assert not verdicts.exact.any()
    assert {k: verdicts.clusters[k] for k in ("clusters", "removed", "size_histogram")} == {
        "clusters": 12,
        "removed": 12,
        "size_histogram": {"2": 12},
    }


def test_verification_rejects_a_candidate_that_shares_a_band_only():
    signatures = random_signatures(4)
    signatures[1, :8] = signatures[0, :8]  # one band in common, 8 of 112 values: estimated Jaccard 0.07
    signatures[3, :84] = signatures[2, :84]  # 84 of 112 values equal: exactly the default threshold 0.75
    keys, docs = band_rows(signatures, np.arange(4), DedupConfig())
    lo, hi = candidate_edges(keys, docs)
    assert list(zip(lo, hi)) == [(0, 1), (2, 3)]
    assert verify_edges(lo, hi, signatures, 0.75).tolist() == [False, True]
    assert verify_edges(lo, hi, signatures, 0.76).tolist() == [False, False]  # 85 needed
    verdicts = decide(signatures)
    assert verdicts.kept_as.tolist() == [0, 1, 2, 2]
    # pair (2, 3) shares bands 0-9, each a candidate in its band; pair (0, 1) band 0 only
    assert (verdicts.clusters["candidate_pairs"], verdicts.clusters["verified_pairs"]) == (11, 10)


def test_band_keys_are_equal_exactly_when_a_band_is():
    cfg = DedupConfig()
    signatures = random_signatures(3)
    signatures[1, 8:16] = signatures[0, 8:16]  # band 1 shared
    signatures[2, 16:24] = signatures[0, 8:16]  # band 0's values, but in band 2
    keys, docs = band_rows(signatures, np.array([10, 11, 12]), cfg)
    keys = keys.reshape(cfg.bands, 3)
    assert docs.tolist() == [10, 11, 12] * cfg.bands
    assert [
        (band, a, b) for band in range(cfg.bands) for a in range(3) for b in range(a) if keys[band, a] == keys[band, b]
    ] == [(1, 1, 0)]
    keys_1, docs_1 = band_rows(signatures, np.array([10, 11, 12]), cfg, (1,))  # one band, as the driver asks
    assert keys_1.tolist() == keys[1].tolist() and docs_1.tolist() == [10, 11, 12]


def test_candidates_are_all_pairs_of_small_buckets_and_star_plus_chain_in_big_ones():
    keys = np.array([5, 5, 5, 7, 7, 9, 5], np.uint64)  # buckets: 5 -> {0, 1, 3, 4}, 7 -> {2, 8}, 9 -> {6}
    docs = np.array([3, 1, 4, 8, 2, 6, 0])
    lo, hi = candidate_edges(keys, docs)
    assert list(zip(lo.tolist(), hi.tolist())) == [(0, 1), (0, 3), (0, 4), (1, 3), (1, 4), (2, 8), (3, 4)]
    lo, hi = candidate_edges(keys, docs, all_pairs_max=3)  # bucket 5 is big: star on 0, chain 0-1-3-4
    assert list(zip(lo.tolist(), hi.tolist())) == [(0, 1), (0, 3), (0, 4), (1, 3), (2, 8), (3, 4)]
    lo, hi = candidate_edges(keys[[0, 1, 2, 6]], docs[[0, 1, 2, 6]], all_pairs_max=3)  # a big bucket alone
    assert list(zip(lo.tolist(), hi.tolist())) == [(0, 1), (0, 3), (0, 4), (1, 3), (3, 4)]
    assert [len(e) for e in candidate_edges(np.zeros(0, np.uint64), np.zeros(0, np.int64))] == [0, 0]


def planted_signatures(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """200 signatures with planted near copies (about 85-90% of values equal: chains, pairs, a template copied 100
    times, whose buckets exceed ALL_PAIRS_MAX), a pair sharing two bands only, and the indices considered (all but
    13, as if an exact copy)."""
    rng = np.random.default_rng(seed)
    signatures = random_signatures(200, seed)
    for a, b in [(0, 7), (7, 13), (13, 21), (30, 31), (5, 25), (40, 41)]:
        signatures[b] = np.where(rng.random(112) < 0.15, signatures[b], signatures[a])
    for b in range(100, 200):
        signatures[b] = np.where(rng.random(112) < 0.1, signatures[b], signatures[50])
    signatures[45, :16] = signatures[44, :16]
    return signatures, np.delete(np.arange(200), 13)


def test_band_tasks_across_processes_and_partitions_verify_the_pairs_of_one_process(tmp_path):
    """The band tasks, pickled both ways as a worker process gets and returns them, over 3 partitions of each
    band, verify the pairs that the stages run band by band in one process verify, with the same counts."""
    cfg = DedupConfig()
    signatures, index = planted_signatures()
    direct, candidates, verified = set(), 0, 0
    for band in range(cfg.bands):
        lo, hi = candidate_edges(*band_rows(signatures[index], index, cfg, (band,)))
        ok = verify_edges(lo, hi, signatures, cfg.threshold)
        candidates, verified = candidates + len(lo), verified + int(ok.sum())
        direct |= set(zip(lo[ok].tolist(), hi[ok].tolist()))
    path = tmp_path / "signatures"
    path.write_bytes(signatures.tobytes() + index.astype("<i8").tobytes())
    tasks_seen = []

    def across_processes(tasks, make):
        fn = pickle.loads(pickle.dumps(make))()
        for task in tasks:
            tasks_seen.append(task)
            yield pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(task)))))

    pairs, on_engine_candidates, on_engine_verified = verified_pairs(str(path), 200, cfg, 3, across_processes)
    assert [tuple(p) for p in pairs.tolist()] == sorted(direct)
    assert (on_engine_candidates, on_engine_verified) == (candidates, verified)
    assert len(tasks_seen) == 3 * cfg.bands
    assert {(0, 7), (30, 31), (40, 41), (50, 100)} <= direct and (44, 45) not in direct
    assert not {13, 21} & {d for pair in direct for d in pair}  # 13 is not considered, 21 resembles only 13
    assert candidates > verified > 100  # the template's big buckets, star and chain


def test_union_find_gives_each_component_its_lowest_index():
    lo, hi = np.array([5, 7, 1, 9, 4]), np.array([7, 2, 3, 8, 9])  # {2, 5, 7}, {1, 3}, {4, 8, 9}, rest alone
    expected = [0, 1, 2, 1, 4, 2, 6, 2, 4, 4]
    assert join_components(np.arange(10), lo, hi).tolist() == expected
    order = np.random.default_rng(0).permutation(5)
    assert join_components(np.arange(10), hi[order], lo[order]).tolist() == expected
    parent = join_components(np.arange(10), lo[:2], hi[:2])  # joined a few pairs at a time, as band by band
    assert join_components(parent, lo[2:], hi[2:]).tolist() == expected
    # a long path joined in reverse order still ends at its lowest index
    assert join_components(np.arange(6), np.arange(4, -1, -1), np.arange(5, 0, -1)).tolist() == [0] * 6


def test_star_rounds_label_components_as_union_find_does():
    lo, hi = np.array([5, 7, 1, 9, 4]), np.array([7, 2, 3, 8, 9])  # {2, 5, 7}, {1, 3}, {4, 8, 9}, rest alone
    assert star_components(10, lo, hi, Components(partitions=3)).tolist() == [0, 1, 2, 1, 4, 2, 6, 2, 4, 4]
    chain = np.random.default_rng(0).permutation(200)  # a path through 200 documents in random order
    assert star_components(200, chain[:-1], chain[1:], Components(partitions=2)).tolist() == [0] * 200
    rng = np.random.default_rng(1)
    for _ in range(20):
        n, m = int(rng.integers(2, 200)), int(rng.integers(0, 200))
        lo, hi = rng.integers(0, n, m), rng.integers(0, n, m)
        expected = join_components(np.arange(n), lo, hi).tolist()
        assert star_components(n, lo, hi, Components(partitions=int(rng.integers(1, 4)))).tolist() == expected


def test_a_star_round_never_emits_more_edges_than_it_receives():
    # node 3 with neighbours 1, 5, 6: large-star hooks 5 and 6 onto 1; small-star hooks 3 and 1 onto 1 (3 only)
    rows = np.array([[3, 5], [3, 1], [3, 6], [3, 5]])
    buckets, labels, _ = star_round(rows, partitions=2, large=True)
    assert [b.tolist() for b in buckets] == [[[6, 1]], [[5, 1], [1, 5], [1, 6]]]
    assert labels.tolist() == [[3, 1]]
    buckets, _, _ = star_round(rows, partitions=1, large=False)
    assert buckets[0].tolist() == [[3, 1], [1, 3]]


def test_clusters_on_the_engine_equal_union_finds_on_planted_chains():
    """Chains a-b, b-c with a-c below the threshold, a star and pairs: union_find_max_pairs=0 forms every cluster
    in star rounds on an engine (here in this process, two partitions) and keeps the same documents."""
    rng = np.random.default_rng(3)
    signatures = random_signatures(40, seed=3)
    for a, b in [(0, 7), (7, 13), (13, 21), (30, 31), (5, 25), (25, 33), (2, 9), (2, 17), (2, 38)]:
        signatures[b] = np.where(rng.random(112) < 0.15, signatures[b], signatures[a])  # about 85% equal
    assert (signatures[0] == signatures[21]).mean() < 0.75  # the chain's ends are apart on their own
    rounds = []

    def engine(parts, make):
        rounds.append(len(parts))
        return map(make(), parts)

    by_union_find = decide(signatures)
    on_engine = decide(signatures, components=Components(engine, 2, union_find_max_pairs=0))
    assert on_engine.kept_as.tolist() == by_union_find.kept_as.tolist()
    assert on_engine.clusters == by_union_find.clusters
    assert sorted(set(by_union_find.kept_as[[0, 7, 13, 21]])) == [0] and by_union_find.clusters["clusters"] == 4
    assert len(rounds) >= 2 and set(rounds) == {2}


def test_first_of_equal_keys():
    keys = np.array([[1, 2], [3, 4], [1, 2], [0, 0], [3, 4], [1, 3]], np.uint64)
    assert first_of_equal(keys).tolist() == [0, 1, 0, 3, 1, 5]


def test_chains_of_verified_pairs_form_one_cluster_kept_at_its_lowest_index(tmp_path):
    signatures = random_signatures(6)
    signatures[2] = signatures[4]
    signatures[2, :20] = random_signatures(1, 1)[0, :20]  # 2 ~ 4: 92 of 112 equal
    signatures[0] = signatures[2]
    signatures[0, 40:60] = random_signatures(1, 2)[0, 40:60]  # 0 ~ 2: 92 equal; 0 ~ 4: 72 equal (0.64), apart
    keys = [bytes([i]) * 16 for i in range(5)] + [bytes([4]) * 16]  # 5 is an exact copy of 4
    verdicts = decide(signatures, keys, spill_dir=tmp_path)
    assert (signatures[0] == signatures[4]).sum() == 72
    assert verdicts.kept_as.tolist() == [0, 1, 0, 3, 0, 4]
    assert verdicts.exact.tolist() == [False] * 5 + [True]
    assert verdicts.clusters["largest"] == [{"kept": 0, "size": 3, "members": [2, 4]}]
    assert list(tmp_path.iterdir()) == []  # the signature file has no name: nothing is left behind


def test_documents_without_words_are_never_near_duplicates():
    index = DedupIndex(DedupConfig())
    index.add([b"a" * 16, b"b" * 16, b"c" * 16], [None, None, random_signatures(1)[0]])
    verdicts = index.verdicts()
    assert verdicts.kept_as.tolist() == [0, 1, 2] and verdicts.clusters["clusters"] == 0


def test_exact_or_near_dedup_off():
    signatures = random_signatures(3)
    signatures[2] = signatures[0]
    keys = [b"k" * 16, b"k" * 16, b"z" * 16]
    assert decide(signatures, keys, DedupConfig(near=False)).kept_as.tolist() == [0, 0, 2]
    near_only = decide(signatures, keys, DedupConfig(exact=False))
    assert near_only.kept_as.tolist() == [0, 1, 0] and not near_only.exact.any()


def test_cluster_statistics():
    parent = np.array([0, 1, 0, 0, 4, 1, 0, 7, 7, 9])
    considered = np.array([True] * 9 + [False])
    stats = cluster_stats(parent, considered, examples=2)
    assert stats == {
        "clusters": 3,
        "documents_in_clusters": 8,
        "removed": 5,
        "size_histogram": {"2": 2, "3-4": 1},
        "largest": [{"kept": 0, "size": 4, "members": [2, 3, 6]}, {"kept": 1, "size": 2, "members": [5]}],
    }


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="bands=10 x rows=8 must equal num_perm=112"):
        MinHasher(DedupConfig(bands=10))
    with pytest.raises(ConfigError, match=r"threshold=1.5 must be in \(0, 1\]"):
        DedupIndex(DedupConfig(threshold=1.5))


def test_the_benchmark_runs_and_tabulates():
    result = bench_dedup(pairs=12, docs=300)
    planted, memory = result["planted"], result["memory"]
    assert sum(b["pairs"] for b in planted["bins"]) == 12 == planted["pairs"]
    assert memory["documents"] == 512 and memory["signature_file_bytes_per_doc"] == 448  # two chunks of 256
    assert memory["band_task_peak_bytes_per_doc"] > 0
    assert "merged at J >= 0.8" in dedup_table(result) and "| 0.9-1.0 |" in dedup_table(result)
