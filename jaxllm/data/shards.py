"""Token shards: one split's token ids in a flat binary file, memory-mapped for reading, with a JSON index.

Documents are concatenated, each starting with the tokenizer's <bos>, so no padding is ever trained on. The index
records the dtype, the token and document counts, each document's start offset (`<split>.offsets.npy`) and the
UTF-8 bytes of the text, which bits-per-byte figures need.
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterable

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def write_split(
    directory: pathlib.Path, split: str, docs_tokens: Iterable[list[int]], n_bytes: int, vocab_size: int, bos: int
) -> dict:
    """Writes <split>.bin, <split>.offsets.npy and <split>.json; returns the index. Callers write into a local
    folder of their own and publish it when every split is done, so a reader never sees a partial shard."""
    dtype = token_dtype(vocab_size)
    offsets, total = [], 0
    with open(directory / f"{split}.bin", "wb") as f:
        for ids in docs_tokens:
            row = np.empty(len(ids) + 1, dtype)
            row[0], row[1:] = bos, ids
            f.write(row.tobytes())
            offsets.append(total)
            total += len(row)
    np.save(directory / f"{split}.offsets.npy", np.asarray(offsets, np.int64))
    index = {"split": split, "dtype": dtype.name, "tokens": total, "documents": len(offsets), "bytes": n_bytes}
    (directory / f"{split}.json").write_text(json.dumps(index, indent=2))
    return index


def read_split(directory: pathlib.Path, split: str) -> tuple[np.ndarray, dict]:
    """The split's tokens as a read-only memmap, and its index."""
    index = json.loads((directory / f"{split}.json").read_text())
    tokens = np.memmap(directory / f"{split}.bin", dtype=index["dtype"], mode="r", shape=(index["tokens"],))
    return tokens, index
