import math

import numpy as np

from jaxllm.data import loader, shards
from jaxllm.tokenizer import BOS
from jaxllm.train.evaluation import bits_per_byte

TOKENS = np.arange(10_000, dtype=np.uint16)


def test_train_batch_is_a_pure_function_of_seed_and_step():
    a = loader.train_batch(TOKENS, 16, 8, seed=3, step=41)
    b = loader.train_batch(TOKENS, 16, 8, seed=3, step=41)
    c = loader.train_batch(TOKENS, 16, 8, seed=3, step=42)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(a["inputs"], c["inputs"])
    # targets are inputs shifted by one token (the test corpus counts up by one)
    np.testing.assert_array_equal(a["targets"], a["inputs"] + 1)
    assert a["inputs"].shape == (8, 16) and a["inputs"].dtype == np.int32


def test_process_slices_tile_the_global_batch():
    whole = loader.train_batch(TOKENS, 16, 8, seed=0, step=5)
    parts = [loader.train_batch(TOKENS, 16, 8, seed=0, step=5, process_index=i, process_count=4) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole["inputs"])


def test_eval_batches_are_fixed_and_cover_the_split():
    batches = loader.eval_batches(TOKENS, 16, 4, 3)
    assert len(batches) == 3
    starts = np.concatenate([b["inputs"][:, 0] for b in batches])
    assert starts[0] == 0 and starts[-1] == len(TOKENS) - 17
    assert np.all(np.diff(starts) > 0)


def test_shards_round_trip_with_bos_separators(tmp_path):
    docs = [[10, 11, 12], [20], [30, 31]]
    index = shards.write_split(tmp_path, "train", iter(docs), n_bytes=99, vocab_size=512, bos=BOS)
    tokens, read_index = shards.read_split(tmp_path, "train")
    assert index == read_index == {"split": "train", "dtype": "uint16", "tokens": 9, "documents": 3, "bytes": 99}
    np.testing.assert_array_equal(tokens, [BOS, 10, 11, 12, BOS, 20, BOS, 30, 31])
    np.testing.assert_array_equal(np.load(tmp_path / "train.offsets.npy"), [0, 4, 6])


def test_bits_per_byte_by_hand():
    # 1000 tokens at 2.0 nats each over 3500 bytes: 2000 nats = 2000/ln 2 bits = 2885.39 bits / 3500 bytes
    assert math.isclose(bits_per_byte(2000.0, 3500.0), 2885.390081777927 / 3500, rel_tol=1e-12)
    assert math.isclose(bits_per_byte(math.log(2) * 8, 1), 8.0)
