"""Shared fixtures: a small real corpus (stdlib files) and a tiny config that trains in seconds."""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import shutil

import pytest

# LLVM's optimisations off for this process and the commands the tests start (set before JAX starts its backend):
# they change no result the tests check, and compiling without them takes about half the time of the suite.
os.environ["XLA_FLAGS"] = " ".join(
    filter(
        None,
        [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"],
    )
)

from flax import nnx  # noqa: E402

from jaxllm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from jaxllm.data.sources import stdlib_root  # noqa: E402
from jaxllm.model.transformer import Transformer, abstract_model  # noqa: E402

pytest_plugins = ("tests.posttrain_fixtures",)  # one tiny base -> SFT -> DPO lineage for the whole session

# Every test of the model, the step and generation runs under each kernel set (the `kernel_set` fixture): the
# reference is the portable path every GPU and TPU runs, so CI exercises it although it has no accelerator.
KERNEL_SETS = ("reference", "xla_cpu")


@pytest.fixture(params=KERNEL_SETS)
def kernel_set(request) -> str:
    return request.param


@functools.cache
def _random_params(shape: ModelConfig, seed: int) -> nnx.State:
    with nnx.use_eager_sharding(False):
        return nnx.state(Transformer(shape, nnx.Rngs(seed)), nnx.Param)


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model of cfg's shape, run by cfg's kernels and dtype. The parameters are made once
    per shape and seed (eager initialisation compiles every op: slow) and shared, so tests must not change them."""
    shape = dataclasses.replace(cfg, kernels="reference", compute_dtype="float32", remat="none", scan_layers=True)
    return nnx.merge(nnx.graphdef(abstract_model(cfg)), _random_params(shape, seed))


# Real, varied stdlib modules: code, docstrings, unicode, tabs.
CORPUS_FILES = (
    "textwrap.py",
    "string.py",
    "glob.py",
    "fnmatch.py",
    "bisect.py",
    "heapq.py",
    "shlex.py",
    "difflib.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "csv.py",
    "colorsys.py",
    "calendar.py",
    "base64.py",
    "locale.py",
    "tokenize.py",
    "keyword.py",
    "copy.py",
    "pprint.py",
    "reprlib.py",
    "numbers.py",
    "statistics.py",
    "fractions.py",
    "random.py",
    "operator.py",
)


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
    train = {
        "steps": 8,
        "batch_size": 4,
        "log_every": 2,
        "eval_every": 4,
        "eval_batches": 2,
        "checkpoint_every": 4,
        "sample_tokens": 8,
        "peak_tflops": 1.0,
    } | train
    return Config(
        name="tiny",
        # kernels 'auto' (as users run it); float32, so that figures do not depend on this CPU's bf16 speed
        model=ModelConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=32, compute_dtype="float32"),
        data=DataConfig(sources=(f"dir:{corpus}",), val_fraction=0.15, cache_dir=str(cache)),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        train=TrainConfig(**train),
    )
