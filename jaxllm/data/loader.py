"""Batches as pure functions of (seed, step, process): resuming needs no iterator state and is exact.

Training batches are windows of block_size + 1 tokens at positions drawn from a generator seeded by (seed, step);
each process takes its own contiguous rows of the global batch. Evaluation uses fixed windows spread evenly over
the held-out split, so every evaluation scores the same tokens.
"""

from __future__ import annotations

import numpy as np


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> dict[str, np.ndarray]:
    rows = np.stack([tokens[s : s + block_size + 1] for s in starts]).astype(np.int32)
    return {"inputs": rows[:, :-1], "targets": rows[:, 1:]}


def check_length(tokens: np.ndarray, block_size: int, split: str) -> None:
    if len(tokens) < block_size + 2:
        raise ValueError(
            f"the {split} split has {len(tokens)} tokens, fewer than one window of "
            f"model.block_size + 1 = {block_size + 1}; add data or lower model.block_size"
        )


def train_batch(
    tokens: np.ndarray,
    block_size: int,
    global_batch: int,
    seed: int,
    step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """This process's rows of the global batch for `step`: (global_batch / process_count, block_size) each."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - block_size - 1, size=global_batch)
    per_process = global_batch // process_count
    return _windows(tokens, starts[process_index * per_process : (process_index + 1) * per_process], block_size)


def eval_batches(
    tokens: np.ndarray,
    block_size: int,
    global_batch: int,
    n_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """n_batches fixed batches of windows spread evenly over the split (overlapping only if it is short)."""
    starts = np.linspace(0, len(tokens) - block_size - 1, n_batches * global_batch).astype(np.int64)
    per_process = global_batch // process_count
    batches = []
    for b in range(n_batches):
        rows = starts[b * global_batch : (b + 1) * global_batch]
        batches.append(
            _windows(tokens, rows[process_index * per_process : (process_index + 1) * per_process], block_size)
        )
    return batches
