"""`python -m jaxllm.bench dedup [--pairs=3000] [--docs=1000000] [--workers=2]`: near dedup against planted
near-duplicates, and the dedup driver's memory at scale.

Planted pairs: an original of random words and a copy with spans of it replaced by new words, as many spans as
bring the pair's word-5-gram Jaccard (computed exactly) nearest to a target drawn evenly from [0.2, 1); every
document goes through the pipeline's own MinHash and dedup driver, and a pair counts as merged when both end in
one cluster. Beside it, the rate at which LSH alone (any shared band, no verification) would have paired them,
and the recall with a verification threshold of 0.8 instead of the default.
Memory: the driver (dedup.DedupIndex) fed synthetic exact keys and signatures, 256 documents at a time as the
pipeline does, with planted exact and near copies, its band tasks on a local engine of `workers` processes;
measured by tracemalloc (every numpy array included) while documents stream in and while it decides, and by the
process's resident memory; then one band task in this process, its tracemalloc peak being a worker's share.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import tracemalloc

import numpy as np

from jaxllm.config.clean import DedupConfig
from jaxllm.data.dedup import DedupIndex, MinHasher, band_partition, band_rows, exact_key, partitions_for
from jaxllm.data.pipeline import local_engine

VOCABULARY = 10_000  # distinct words of the planted texts: 5-grams almost never repeat within a text
CHUNK = 256  # documents handed to the driver at a time, as pipeline.CHUNK_DOCS
BINS = np.r_[0.0, np.round(np.arange(0.3, 1.01, 0.1), 1)]  # targets start at 0.2; a pair may land just below


def ngram_set(words: list[str], n: int = 5) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def planted_pair(rng: np.random.Generator, target: float) -> tuple[list[str], list[str], float]:
    """(original words, copy words, their exact word-5-gram Jaccard): the copy has the fewest of a random sequence
    of span replacements (1-8 words each, by words found nowhere else) that bring the Jaccard to at most target,
    or one fewer when that lands nearer; at least one replacement, so the copy is never exact."""
    words = [f"w{i}" for i in rng.integers(0, VOCABULARY, int(rng.integers(150, 400)))]
    spans = [
        (int(rng.integers(0, len(words))), [f"z{x}" for x in rng.integers(0, 2**62, int(rng.integers(1, 9)))])
        for _ in range(len(words))
    ]
    original = ngram_set(words)

    def copy(k: int) -> list[str]:
        out = list(words)
        for start, new in spans[:k]:
            out[start : start + len(new)] = new[: len(out) - start]
        return out

    lo, hi = 1, len(spans)  # Jaccard falls as replacements are added: find the first k at or below target
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if jaccard(original, ngram_set(copy(mid))) > target else (lo, mid)
    k = lo
    if k > 1 and abs(jaccard(original, ngram_set(copy(k - 1))) - target) < abs(
        jaccard(original, ngram_set(copy(k))) - target
    ):
        k -= 1
    return words, copy(k), jaccard(original, ngram_set(copy(k)))


def _decide(signatures: list[np.ndarray], keys: list[bytes], cfg: DedupConfig):
    index = DedupIndex(cfg)
    index.add(keys, signatures)
    verdicts = index.verdicts()
    index.close()
    return verdicts


def bench_planted(pairs: int, cfg: DedupConfig, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    hasher = MinHasher(cfg)
    similarity, signatures, keys = [], [], []
    for _ in range(pairs):
        a, b, j = planted_pair(rng, float(rng.uniform(0.2, 1.0)))
        texts = [" ".join(a), " ".join(b)]
        signatures += [hasher.signature(t) for t in texts]
        keys += [exact_key(t) for t in texts]
        similarity.append(j)
    similarity = np.array(similarity)
    high, low = similarity >= 0.8, similarity < 0.5
    verdicts = _decide(signatures, keys, cfg)
    merged = verdicts.kept_as[1::2] == verdicts.kept_as[0::2]
    at_0_8 = _decide(signatures, keys, dataclasses.replace(cfg, threshold=0.8)).kept_as
    band_keys, _ = band_rows(np.array(signatures), np.arange(2 * pairs), cfg)
    band_keys = band_keys.reshape(cfg.bands, pairs, 2)
    lsh_only = (band_keys[:, :, 0] == band_keys[:, :, 1]).any(axis=0)
    bins = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        inside = (similarity >= lo) & (similarity < hi if hi < 1 else similarity <= hi)
        bins.append(
            {
                "jaccard": f"{lo:.1f}-{hi:.1f}",
                "pairs": int(inside.sum()),
                "merged": float(merged[inside].mean()) if inside.any() else None,
                "lsh_only": float(lsh_only[inside].mean()) if inside.any() else None,
            }
        )
    return {
        "pairs": pairs,
        "recall_at_0_8": float(merged[high].mean()),
        "pairs_at_0_8": int(high.sum()),
        "kept_apart_below_0_5": float(1 - merged[low].mean()),
        "pairs_below_0_5": int(low.sum()),
        "lsh_only_recall_at_0_8": float(lsh_only[high].mean()),
        "lsh_only_kept_apart_below_0_5": float(1 - lsh_only[low].mean()),
        "threshold_0_8_recall_at_0_8": float((at_0_8[1::2] == at_0_8[0::2])[high].mean()),
        "candidate_pairs": verdicts.clusters["candidate_pairs"],
        "verified_pairs": verdicts.clusters["verified_pairs"],
        "bins": bins,
    }


def _synthetic_chunk(rng: np.random.Generator, cfg: DedupConfig) -> tuple[list[bytes], list[np.ndarray]]:
    """CHUNK documents' exact keys and signatures: random, except 10% near copies (a tenth of the values of the
    document before replaced: estimated Jaccard about 0.9) and 2% exact copies of the document before."""
    signatures = rng.integers(0, 2**32, (CHUNK, cfg.num_perm), dtype=np.uint32)
    keys = [rng.bytes(16) for _ in range(CHUNK)]
    for i in range(1, CHUNK):
        draw = rng.random()
        if draw < 0.1:
            signatures[i] = np.where(rng.random(cfg.num_perm) < 0.1, signatures[i], signatures[i - 1])
        elif draw < 0.12:
            signatures[i], keys[i] = signatures[i - 1], keys[i - 1]
    return keys, list(signatures)


def _memory_status() -> dict[str, int]:
    """The process's resident memory (total, its peak, anonymous, file-backed) in bytes, from /proc (Linux)."""
    fields = {"VmRSS": "rss", "VmHWM": "rss_peak", "RssAnon": "rss_anon", "RssFile": "rss_file"}
    try:
        with open("/proc/self/status") as f:
            lines = [line.split() for line in f]
    except OSError:
        return {}
    return {fields[p[0][:-1]]: int(p[1]) * 1024 for p in lines if p and p[0][:-1] in fields}


def _sample_anonymous_peak(stop: threading.Event, peak: list[int]) -> None:
    """Keeps peak[0] at the highest anonymous resident memory seen, every 5 ms until stop is set: the mapped
    signature file's pages count in VmHWM but are the kernel's page cache, dropped under pressure."""
    while not stop.wait(0.005):
        peak[0] = max(peak[0], _memory_status().get("rss_anon", 0))


def _task_peak(index: DedupIndex) -> int:
    """tracemalloc's peak while one band task (band 0, partition 0) runs in this process over index's file."""
    tracemalloc.start()
    band_partition(index.signature_path, index.n, index.cfg, partitions_for(index.n), (0, 0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def bench_memory(docs: int, cfg: DedupConfig, workers: int = 2, seed: int = 0) -> dict:
    with local_engine(workers) as engine:
        return _bench_memory(docs, cfg, engine, seed)


def _bench_memory(docs: int, cfg: DedupConfig, engine, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    before = _memory_status()
    stop, anonymous_peak = threading.Event(), [0]
    sampler = threading.Thread(target=_sample_anonymous_peak, args=(stop, anonymous_peak))
    sampler.start()
    tracemalloc.start()
    index = DedupIndex(cfg, engine=engine)
    adding = 0.0  # the driver's time, without making the synthetic documents
    for _ in range(0, docs, CHUNK):
        chunk = _synthetic_chunk(rng, cfg)
        start = time.perf_counter()
        index.add(*chunk)
        adding += time.perf_counter() - start
    streamed = time.perf_counter()
    streaming_bytes, streaming_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    verdicts = index.verdicts()
    decided = time.perf_counter()
    _, deciding_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stop.set()
    sampler.join()
    after = _memory_status() | {"rss_anon_peak": anonymous_peak[0]}
    task_peak = _task_peak(index)
    index.close()
    n = index.n
    removed = int((verdicts.kept_as != np.arange(n)).sum())
    return {
        "documents": n,
        "streaming_bytes_per_doc": streaming_bytes / n,
        "peak_bytes_per_doc": max(streaming_peak, deciding_peak) / n,
        "peak_bytes": max(streaming_peak, deciding_peak),
        "signature_file_bytes_per_doc": 4 * cfg.num_perm,
        "band_task_peak_bytes_per_doc": task_peak / n,
        "rss_before": before,
        "rss_after": after,
        "seconds_streaming": adding,
        "seconds_deciding": decided - streamed,
        "removed": removed,
        "exact_removed": int(verdicts.exact.sum()),
        "near_clusters": verdicts.clusters["clusters"],
        "candidate_pairs": verdicts.clusters["candidate_pairs"],
        "verified_pairs": verdicts.clusters["verified_pairs"],
    }


def bench_dedup(pairs: int, docs: int, workers: int = 2) -> dict:
    cfg = DedupConfig()
    return {
        "settings": {"bands": cfg.bands, "rows": cfg.rows, "ngram": cfg.ngram, "threshold": cfg.threshold},
        "planted": bench_planted(pairs, cfg),
        "memory": bench_memory(docs, cfg, workers) | {"workers": workers},
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def dedup_table(result: dict) -> str:
    s, p, m = result["settings"], result["planted"], result["memory"]
    mb = lambda status, key: f"{status.get(key, 0) / 2**20:,.0f}"  # noqa: E731
    tasks = (  # results measured before the band tasks ran on workers have no such figures
        f" (band tasks on {m['workers']} local workers, one task's peak {m['band_task_peak_bytes_per_doc']:.1f} B/doc)"
        if "workers" in m
        else ""
    )
    lines = [
        f"{s['bands']} bands x {s['rows']} rows, word {s['ngram']}-grams, verified at estimated Jaccard >= "
        f"{s['threshold']}; {p['pairs']:,} planted pairs",
        "",
        f"merged at J >= 0.8: {_pct(p['recall_at_0_8'])} of {p['pairs_at_0_8']:,} (LSH alone "
        f"{_pct(p['lsh_only_recall_at_0_8'])}); kept apart at J < 0.5: {_pct(p['kept_apart_below_0_5'])} of "
        f"{p['pairs_below_0_5']:,} (LSH alone {_pct(p['lsh_only_kept_apart_below_0_5'])}); verified at 0.8 instead, "
        f"{_pct(p['threshold_0_8_recall_at_0_8'])} merged at J >= 0.8",
        "",
        "| exact word-5-gram Jaccard | pairs | merged | LSH alone |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {b['jaccard']} | {b['pairs']} | {_pct(b['merged'])} | {_pct(b['lsh_only'])} |" for b in p["bins"]]
    lines += [
        "",
        f"driver at {m['documents']:,} synthetic documents: {m['streaming_bytes_per_doc']:.1f} B/doc while they "
        f"stream in, peak {m['peak_bytes_per_doc']:.1f} B/doc ({m['peak_bytes'] / 2**20:,.0f} MiB, tracemalloc) "
        f"while deciding{tasks}, plus a {m['signature_file_bytes_per_doc']:.0f} B/doc signature file; resident "
        f"{mb(m['rss_before'], 'rss')} -> {mb(m['rss_after'], 'rss')} MiB (anonymous "
        f"{mb(m['rss_before'], 'rss_anon')} -> {mb(m['rss_after'], 'rss_anon')}, its peak "
        f"{mb(m['rss_after'], 'rss_anon_peak')}; with the mapped signature file's pages, peak "
        f"{mb(m['rss_after'], 'rss_peak')}); {m['seconds_streaming']:.1f} s streaming, {m['seconds_deciding']:.1f} s "
        f"deciding; {m['removed']:,} removed ({m['exact_removed']:,} exact), {m['near_clusters']:,} near clusters, "
        f"{m['verified_pairs']:,} of {m['candidate_pairs']:,} candidate pairs verified",
    ]
    return "\n".join(lines)
