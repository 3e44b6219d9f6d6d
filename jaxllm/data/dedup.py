"""Exact and near-duplicate detection over a whole corpus: which documents to keep, and which group each other
one belongs to.

Exact: a hash of the normalised content; of each group of equal hashes the lowest input index is kept.
Near, over the documents exact dedup kept: MinHash signatures of word n-grams -> LSH band rows -> candidate pairs
(documents sharing a band's bucket) -> pairs verified by estimated Jaccard -> connected components; the lowest
input index of each component is kept. A document is therefore merged only through a chain of verified pairs,
and the choice of the kept one depends on input order alone, not on the number of workers or the order of bands.

The stages are pure functions over arrays, so a distributed engine can run them over shards: `band_rows` (a
shard's signatures -> (bucket key, document) rows, to shuffle by key), `candidate_edges` (rows of whole key
groups -> pairs), `verify_edges` (pairs + signatures -> which pairs hold), `join_components` (pairs -> the
lowest index of each component, by union-find where the pairs fit one machine; past a bound,
components.star_components runs rounds on the engine, which end at the same labels). `DedupIndex` is the driver: it
runs them one band at a time.

Driver memory per document: 16 B (exact key) + 1 B (has a signature) while documents stream in, and at most
about 66 B while deciding (the sort of the keys, the result arrays, one band's keys and their sort), plus 16 B
per distinct verified pair, measured at 1M documents by `python -m jaxllm.bench dedup`; blocks of a few MB come
on top. Signatures (4 B x num_perm,
448 B by default) go to a temporary file that the driver maps and pages through: they need disk, not memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import tempfile
import zlib

import numpy as np

from jaxllm.config import ConfigError
from jaxllm.config.clean import DedupConfig
from jaxllm.data.components import Components, star_components

SHINGLE_WORD_RE = re.compile(r"\w+")
# odd 64-bit constant (golden ratio) that combines word hashes into n-gram hashes and seeds each band's key
_MIX = np.uint64(0x9E3779B97F4A7C15)
_BLOCK = 4096  # shingles hashed at a time: bounds the (shingles x permutations) matrix to a few MB
_ROWS_BLOCK = 1 << 13  # signature rows read or pairs compared at a time: bounds those temporaries to a few MB
# Buckets up to this size get every pair as a candidate (at most 496 pairs), so verification decides each pair on
# its own. Bigger ones (mostly many near copies of one template) get each member's pair with the bucket's first
# member and with the member before it, so their cost stays linear: there a pair neither of which resembles
# those two can be missed (recall, never precision, is what the cap trades).
ALL_PAIRS_MAX = 32
EXAMPLE_MEMBERS = 5  # member ids listed per example cluster in the report


def exact_key(text: str) -> bytes:
    """Hash of the text lower-cased with whitespace runs collapsed: reformatting alone does not make it new."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


def check_config(cfg: DedupConfig) -> None:
    if cfg.bands * cfg.rows != cfg.num_perm:
        raise ConfigError(
            f"data.clean.dedup: bands={cfg.bands} x rows={cfg.rows} must equal num_perm={cfg.num_perm}: "
            "change one of them"
        )
    if not 0 < cfg.threshold <= 1:
        raise ConfigError(
            f"data.clean.dedup.threshold={cfg.threshold} must be in (0, 1]: the estimated Jaccard similarity a "
            "candidate pair needs to be merged (e.g. 0.75)"
        )


class MinHasher:
    """MinHash signatures with multiply-add-shift hashing ((a*x + b) mod 2^64) >> 32, a 2-independent family for
    32-bit keys that needs no modulo, so numpy's wrapping uint64 arithmetic computes it exactly."""

    def __init__(self, cfg: DedupConfig):
        check_config(cfg)
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


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit over the output."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def band_rows(signatures: np.ndarray, doc_index: np.ndarray, cfg: DedupConfig, bands=None):
    """(keys, docs): one row per document and band (of `bands`, default all), keys (uint64) hashing the band's
    number and its `rows` values, so rows sharing a key are one (band, bucket). A rare 64-bit collision only adds
    a candidate pair, which verification then judges."""
    bands = range(cfg.bands) if bands is None else bands
    keys = []
    for band in bands:
        key = np.full(len(signatures), (int(_MIX) * (band + 1)) % 2**64, np.uint64)
        for col in range(band * cfg.rows, (band + 1) * cfg.rows):
            key = _mix64(key ^ signatures[:, col].astype(np.uint64))
        keys.append(key)
    return np.concatenate(keys) if keys else np.zeros(0, np.uint64), np.tile(np.asarray(doc_index, np.int64), len(keys))


def candidate_edges(keys: np.ndarray, docs: np.ndarray, all_pairs_max: int = ALL_PAIRS_MAX):
    """(lo, hi) int64 pairs of documents sharing a key, lo < hi, each pair once: every pair of a group of at most
    all_pairs_max rows; in a bigger group, each member with the group's lowest member and with the member just
    below it. `keys`, `docs` must hold whole groups (all rows of each key they contain), in any order."""
    order = np.lexsort((docs, keys))
    keys, docs = keys[order], docs[order]
    del order
    shared, same = np.zeros(len(keys), bool), keys[1:] == keys[:-1]
    shared[1:] |= same
    shared[:-1] |= same
    keys, docs = keys[shared], docs[shared]  # rows of groups of two or more: most rows are alone in their group
    del shared, same
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[first, len(keys)])
    small = np.repeat(sizes <= all_pairs_max, sizes)
    lo, hi = [], []
    # rows d apart in sorted order with equal keys: d = 1 chains every group, larger d pairs up small ones
    for d in range(1, int(sizes[sizes <= all_pairs_max].max(initial=1))):
        at = np.flatnonzero((keys[:-d] == keys[d:]) & (small[:-d] | (d == 1)))
        lo.append(docs[at])
        hi.append(docs[at + d])
    big = sizes > all_pairs_max
    members, first_member = np.flatnonzero(~small), np.repeat(first[big], sizes[big])
    star = members != first_member
    lo.append(docs[first_member[star]])
    hi.append(docs[members[star]])
    lo, hi = np.concatenate(lo), np.concatenate(hi)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    pairs = np.unique(np.stack([lo, hi], axis=1)[lo != hi], axis=0)
    return pairs[:, 0], pairs[:, 1]


def verify_edges(lo: np.ndarray, hi: np.ndarray, signatures: np.ndarray, threshold: float) -> np.ndarray:
    """(pairs,) bool: the pair's estimated Jaccard (share of equal MinHash values) is at least threshold.
    `signatures` is indexed by document (an array or a memory-mapped file)."""
    need = math.ceil(threshold * signatures.shape[1] - 1e-9)  # equal values needed (84 of 112 at 0.75)
    ok = np.zeros(len(lo), bool)
    for start in range(0, len(lo), _ROWS_BLOCK):
        a = signatures[lo[start : start + _ROWS_BLOCK]]
        b = signatures[hi[start : start + _ROWS_BLOCK]]
        ok[start : start + _ROWS_BLOCK] = (a == b).sum(axis=1) >= need
    return ok


def join_components(parent: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Union-find on arrays: `parent` (n,) int64 maps each document to the lowest index of its component so far
    (np.arange(n) at first); returns a new array with the pairs' components joined. Each round hooks the higher
    root of every pair under the lower one, then compresses paths by pointer jumping until every entry is a root,
    so roots only ever decrease and the root of a component is its lowest index."""
    parent = parent.copy()
    while True:
        a, b = parent[lo], parent[hi]
        apart = a != b
        if not apart.any():
            return parent
        lo, hi, a, b = lo[apart], hi[apart], a[apart], b[apart]
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
        while not np.array_equal(grand := parent[parent], parent):
            parent = grand


def first_of_equal(keys: np.ndarray) -> np.ndarray:
    """(n,) int64: for each row of keys (n, k), the lowest index of a row equal to it."""
    n = len(keys)
    order = np.lexsort(keys.T[::-1])  # stable: equal rows stay in index order
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1)]) if n else np.zeros(0, np.int64)
    del ordered
    out = np.empty(n, np.int64)
    out[order] = order[np.repeat(starts, np.diff(np.r_[starts, n]))]
    return out


def cluster_stats(parent: np.ndarray, considered: np.ndarray, examples: int) -> dict:
    """Counts and a size histogram of the near-duplicate clusters (components of at least two considered
    documents), and the `examples` largest (ties: lowest kept index first) with their kept index and the indices
    of their first EXAMPLE_MEMBERS other members."""
    sizes = np.bincount(parent[considered], minlength=len(parent))
    roots = np.flatnonzero(sizes >= 2)
    bins, counts = np.unique(np.ceil(np.log2(sizes[roots])).astype(np.int64), return_counts=True)
    top = roots[np.lexsort((roots, -sizes[roots]))[:examples]]
    return {
        "clusters": len(roots),
        "documents_in_clusters": int(sizes[roots].sum()),
        "removed": int(sizes[roots].sum() - len(roots)),
        "size_histogram": {("2" if b == 1 else f"{2 ** (b - 1) + 1}-{2**b}"): int(c) for b, c in zip(bins, counts)},
        "largest": [
            {
                "kept": int(root),
                "size": int(sizes[root]),
                "members": np.flatnonzero((parent == root) & considered)[1 : 1 + EXAMPLE_MEMBERS].tolist(),
            }
            for root in top
        ],
    }


@dataclasses.dataclass
class Verdicts:
    """What dedup decided for documents 0..n-1 (in input order)."""

    kept_as: np.ndarray  # (n,) int64: the lowest index of the document's group, itself when the document is kept
    exact: np.ndarray  # (n,) bool: removed as an exact copy of kept_as (else, when kept_as < index, a near one)
    clusters: dict  # near-duplicate clusters (cluster_stats, documents as indices) and the pairs each stage kept

    def first_removed(self, exact: bool, count: int) -> np.ndarray:
        """Indices of the first `count` documents removed as exact (or as near) duplicates."""
        removed = (self.kept_as != np.arange(len(self.kept_as))) & (self.exact == exact)
        return np.flatnonzero(removed)[:count]


class DedupIndex:
    """The local engine's driver: collects each document's exact key and signature as they stream in (keys in
    memory, signatures appended to a temporary file in spill_dir), then `verdicts()` runs the stages."""

    def __init__(self, cfg: DedupConfig, spill_dir=None, components: Components = Components()):
        check_config(cfg)
        self.cfg = cfg
        self.components = components
        self.n = 0
        self._keys: list[np.ndarray] = []
        self._has_signature: list[np.ndarray] = []
        self._signatures = tempfile.TemporaryFile(prefix="dedup-signatures-", dir=spill_dir)

    def close(self) -> None:
        self._signatures.close()

    def add(self, exact_keys: list[bytes], signatures: list[np.ndarray | None]) -> None:
        """Appends documents self.n, self.n + 1, ... (None: a document without words, never a near duplicate)."""
        self._keys.append(np.frombuffer(b"".join(exact_keys), "<u8").reshape(-1, 2))
        self._has_signature.append(np.array([s is not None for s in signatures], bool))
        if self.cfg.near:
            rows = [np.zeros(self.cfg.num_perm, np.uint32) if s is None else s for s in signatures]
            self._signatures.write(np.asarray(rows, np.uint32).reshape(-1, self.cfg.num_perm).tobytes())
        self.n += len(exact_keys)

    def verdicts(self, examples: int = 3) -> Verdicts:
        n = self.n
        keys = np.concatenate(self._keys) if self._keys else np.zeros((0, 2), np.uint64)
        self._keys = []
        kept_as = first_of_equal(keys) if self.cfg.exact else np.arange(n)
        del keys
        exact = kept_as != np.arange(n)
        considered = np.concatenate(self._has_signature) & ~exact if self._has_signature else np.zeros(0, bool)
        self._has_signature = []
        parent, counts = np.arange(n), {"candidate_pairs": 0, "verified_pairs": 0}
        if self.cfg.near and considered.any():
            self._signatures.flush()
            signatures = np.memmap(self._signatures, np.uint32, "r", shape=(n, self.cfg.num_perm))
            parent = self._near(signatures, np.flatnonzero(considered), parent, counts)
        return Verdicts(np.where(exact, kept_as, parent), exact, cluster_stats(parent, considered, examples) | counts)

    def _near(self, signatures: np.ndarray, index: np.ndarray, parent: np.ndarray, counts: dict) -> np.ndarray:
        """Components of verified pairs: candidates one band at a time (the local form of a shuffle by (band,
        bucket)), the distinct verified pairs joined by union-find or, past components.union_find_max_pairs, by
        star rounds on the components' engine."""
        verified = np.zeros((0, 2), np.int64)
        for band in range(self.cfg.bands):
            keys = np.empty(len(index), np.uint64)
            for s in range(0, len(index), _ROWS_BLOCK):
                block = index[s : s + _ROWS_BLOCK]
                keys[s : s + _ROWS_BLOCK] = band_rows(signatures[block], block, self.cfg, (band,))[0]
            lo, hi = candidate_edges(keys, index)
            del keys
            ok = verify_edges(lo, hi, signatures, self.cfg.threshold)
            counts["candidate_pairs"] += len(lo)
            counts["verified_pairs"] += int(ok.sum())
            verified = np.unique(np.concatenate([verified, np.stack([lo[ok], hi[ok]], 1)]), axis=0)
        bound = self.components.union_find_max_pairs
        if bound is None or len(verified) <= bound:
            return join_components(parent, verified[:, 0], verified[:, 1])
        return star_components(len(parent), verified[:, 0], verified[:, 1], self.components)
