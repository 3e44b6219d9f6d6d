"""Shared fixtures: a small real corpus (stdlib files) and a tiny config that trains in seconds."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from jaxllm.data.sources import stdlib_root

pytest_plugins = ("tests.posttrain_fixtures",)  # one tiny base -> SFT -> DPO lineage for the whole session

# Real, varied stdlib modules: code, docstrings, unicode, tabs.
CORPUS_FILES = ("textwrap.py", "string.py", "glob.py", "fnmatch.py", "bisect.py", "heapq.py", "shlex.py",
                "difflib.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "csv.py", "colorsys.py",
                "calendar.py", "base64.py", "locale.py", "tokenize.py", "keyword.py", "copy.py", "pprint.py",
                "reprlib.py", "numbers.py", "statistics.py", "fractions.py", "random.py", "operator.py")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_in_tmp(tmp_path_factory):
    """`python -m jaxllm...` subprocesses keep their compiled programs (jaxllm/__init__.py) in this session's
    temporary directory, not the user's cache."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("compilation_cache"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("corpus")
    for name in CORPUS_FILES:
        shutil.copy(stdlib_root() / name, out / name.replace("/", "_"))
    return out


def tiny_config(corpus: pathlib.Path, cache: pathlib.Path, **train) -> Config:
    train = {"steps": 8, "batch_size": 4, "log_every": 2, "eval_every": 4, "eval_batches": 2,
             "checkpoint_every": 4, "sample_tokens": 8, "peak_tflops": 1.0} | train
    return Config(
        name="tiny",
        model=ModelConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=32),
        data=DataConfig(sources=(f"dir:{corpus}",), val_fraction=0.15, cache_dir=str(cache)),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        train=TrainConfig(**train),
    )
