"""Exact and near-duplicate detection over a whole corpus: which documents to keep, and which group each other
one belongs to.

Exact: a hash of the normalised content; of each group of equal hashes the lowest input index is kept.
Near, over the documents exact dedup kept: MinHash signatures of word n-grams -> LSH band rows -> candidate pairs
(documents sharing a band's bucket) -> pairs verified by estimated Jaccard -> connected components; the lowest
input index of each component is kept. A document is therefore merged only through a chain of verified pairs,
and the choice of the kept one depends on input order alone, not on the number of workers, partitions or the order
of bands.

The stages are pure functions over arrays: `band_rows` (signatures -> (bucket key, document) rows), `candidate_edges`
(rows of whole key groups -> pairs), `verify_edges` (pairs + signatures -> which pairs hold), `join_components`
(pairs -> the lowest index of each component, by union-find where the pairs fit the driver; past a bound,
components.star_components runs rounds on the engine, which end at the same labels). Banding is a shuffle by
(band, bucket) on the engine (pipeline.Engine: the local process pool or Ray actors): `band_partition` is one task,
a band and a partition p of P, which computes that band's key for every document, keeps the keys whose value
% P == p (so each bucket lies whole in one task), takes their candidate pairs and verifies them; only the verified
pairs and a count come back. A pair shares at most one bucket per band, so the tasks of a band find each of its
pairs once, and the pairs, the counts and therefore the clusters are those of one process running the bands in
turn. `DedupIndex` is the driver: it collects the keys and signatures, decides exact dedup, maps the band tasks
and joins the distinct verified pairs.

What crosses the process boundary: a task is (band, p) plus the signature file's path, the number of documents
and the settings; a result is its verified pairs (16 B each) and its count of candidates. Signatures (4 B x
num_perm, 448 B by default) are appended to a named temporary file in spill_dir as documents stream in, then the
indices of the documents near dedup considers (8 B each); every task maps that file and reads the rows it needs,
so workers must see the driver's spill_dir: true of the local engine and of a Ray cluster on this machine; a Ray
cluster of several machines needs spill_dir (the work directory under data.cache_dir, or the temporary directory
when that is on object storage) on a filesystem every machine mounts at the same path.
The file is deleted on close; a crash leaves it in the work directory, which a finished preparation removes.

Driver memory per document: 16 B (exact key) + 1 B (has a signature) while documents stream in (18.7 B measured),
and at most about 58 B while deciding (the sort of the exact keys, the result arrays, the considered indices),
plus 16-32 B per distinct verified pair, measured at 1M documents by `python -m jaxllm.bench dedup` with the band
tasks on two local workers; blocks of a few MB come on top. A band task's peak is about 55 B per considered
document of its band when P = 1 (the keys and documents of its partition, their sort and the candidate
pairs): P = ceil(considered documents / PARTITION_DOCS) keeps it near 110 MB a task whatever the corpus size.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import tempfile
import zlib
from typing import Any, Callable, Iterator

import numpy as np

from jaxllm.config import ConfigError
from jaxllm.config.clean import DedupConfig
from jaxllm.data.components import Components, in_process, star_components

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
# Considered documents per partition of a band: P = ceil(documents / PARTITION_DOCS) bounds a band task's keys
PARTITION_DOCS = 1 << 21
# Below this many considered documents the band tasks run in the driver's process: their work is then less than
# starting an engine's workers (seconds), and the pairs are the same wherever they run
ENGINE_MIN_DOCS = 1 << 16
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
    # rows d apart in sorted order with equal keys: d = 1 chains every group (big ones too, even with no small one
    # beside them, as in a partition of a band), larger d pairs up small ones
    for d in range(1, int(sizes[sizes <= all_pairs_max].max(initial=2))):
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


def partitions_for(considered: int) -> int:
    """P, the partitions of each band for this many considered documents: a function of the data alone."""
    return -(-considered // PARTITION_DOCS)


def band_partition(path: str, n: int, cfg: DedupConfig, partitions: int, task: tuple[int, int]) -> tuple:
    """One band task over the signature file at `path` (n signatures, then the considered documents' indices):
    task (band, p) keeps the band's keys whose value % partitions == p, so every bucket it holds is whole, and
    returns (its verified pairs as (k, 2) int64 (lo, hi) rows, its number of candidate pairs)."""
    band, p = task
    signatures = np.memmap(path, np.uint32, "r", shape=(n, cfg.num_perm))
    index = np.memmap(path, "<i8", "r", offset=signatures.nbytes)
    keys, docs = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    for start in range(0, len(index), _ROWS_BLOCK):
        block = np.asarray(index[start : start + _ROWS_BLOCK], np.int64)
        block_keys = band_rows(signatures[block], block, cfg, (band,))[0]
        mine = block_keys % np.uint64(partitions) == p
        keys.append(block_keys[mine])
        docs.append(block[mine])
    lo, hi = candidate_edges(np.concatenate(keys), np.concatenate(docs))
    del keys, docs
    ok = verify_edges(lo, hi, signatures, cfg.threshold)
    return np.stack([lo[ok], hi[ok]], 1), len(lo)


def band_tasks(path: str, n: int, cfg: DedupConfig, partitions: int) -> Callable[[tuple[int, int]], tuple]:
    """An engine's make for band_partition over one signature file: picklable, built once per worker."""
    return functools.partial(band_partition, path, n, cfg, partitions)


def verified_pairs(path: str, n: int, cfg: DedupConfig, partitions: int, engine) -> tuple[np.ndarray, int, int]:
    """The distinct verified pairs (sorted (k, 2) int64 rows) of the signature file at `path`, its band tasks
    mapped on `engine`; and the candidate and verified pairs counted band by band (a pair counts in each band it
    shares). Results are unioned as they come, whenever the waiting ones outnumber those already distinct, so
    the driver holds at most about twice the distinct pairs."""
    tasks = [(band, p) for band in range(cfg.bands) for p in range(partitions)]
    verified, waiting, candidates, found = np.zeros((0, 2), np.int64), [], 0, 0
    for pairs, count in engine(tasks, functools.partial(band_tasks, path, n, cfg, partitions)):
        candidates, found = candidates + count, found + len(pairs)
        waiting.append(pairs)
        if sum(map(len, waiting)) > len(verified):
            verified, waiting = np.unique(np.concatenate([verified, *waiting]), axis=0), []
    return np.unique(np.concatenate([verified, *waiting]), axis=0), candidates, found


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
    """The dedup driver: collects each document's exact key and signature as they stream in (keys in memory,
    signatures appended to a named temporary file in spill_dir, which the band tasks map), then `verdicts()`
    decides, the band tasks on `engine` (a pipeline.Engine; None, or fewer than ENGINE_MIN_DOCS documents to
    band: this process)."""

    def __init__(self, cfg: DedupConfig, spill_dir=None, components: Components = Components(), engine=None):
        check_config(cfg)
        self.cfg = cfg
        self.components = components
        self.engine: Callable[..., Iterator[Any]] = engine or in_process
        self.n = 0
        self._keys: list[np.ndarray] = []
        self._has_signature: list[np.ndarray] = []
        self._signatures = tempfile.NamedTemporaryFile(prefix="dedup-signatures-", dir=spill_dir)
        self.signature_path = self._signatures.name  # where the band tasks map it

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
            parent = self._near(np.flatnonzero(considered), parent, counts)
        return Verdicts(np.where(exact, kept_as, parent), exact, cluster_stats(parent, considered, examples) | counts)

    def _near(self, index: np.ndarray, parent: np.ndarray, counts: dict) -> np.ndarray:
        """Components of verified pairs: the band tasks on the engine (index appended to the signature file for
        them), the distinct verified pairs joined by union-find or, past components.union_find_max_pairs, by
        star rounds on the components' engine."""
        self._signatures.write(memoryview(index.astype("<i8", copy=False)).cast("B"))
        self._signatures.flush()
        partitions = partitions_for(len(index))
        engine = self.engine if len(index) >= ENGINE_MIN_DOCS else in_process
        verified, counts["candidate_pairs"], counts["verified_pairs"] = verified_pairs(
            self.signature_path, self.n, self.cfg, partitions, engine
        )
        bound = self.components.union_find_max_pairs
        if bound is None or len(verified) <= bound:
            return join_components(parent, verified[:, 0], verified[:, 1])
        return star_components(len(parent), verified[:, 0], verified[:, 1], self.components)
