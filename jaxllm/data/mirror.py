"""This machine's copy of prepared data published on object storage (data.cache_dir=gs://...): training reads token
shards with np.memmap, which needs local files, so a gs:// prepared directory is downloaded once into a folder of
this machine's cache and read from there by every later run on it.

A download goes to a folder of its own, each file's sha256 checked against the manifest (the token shards and the
tokenizer), then is renamed into place with the manifest last written: a copy is trusted only when its manifest is
there, so a download killed or failed midway is never read. Two processes fetching at once each download; the
first rename wins and the other uses its copy. Not for local prepared data, which is read where it is.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

from jaxllm import storage
from jaxllm.config import ConfigError

MANIFEST = "manifest.json"  # written last: a prepared directory, published or copied, is complete once it is there


def is_complete(directory: str | os.PathLike) -> bool:
    return (storage.path(directory) / MANIFEST).is_file()


def local_copy(final: str | os.PathLike) -> pathlib.Path:
    """Where the prepared directory `final` is read from: itself when local, this machine's copy when on gs://."""
    return storage.local_cache(final, "prepared")


def expected_sha256(manifest: dict) -> dict[str, str]:
    """The files of a prepared directory whose sha256 its manifest records (token shards and tokenizer), by name."""
    shards = {f"{name}.bin": split["sha256"] for name, split in manifest["splits"].items()}
    return shards | {manifest["tokenizer_file"]: manifest["tokenizer_sha256"]}


def fetch(final: str | os.PathLike, local: pathlib.Path) -> pathlib.Path:
    """Downloads the published prepared directory `final` (gs://) into `local`, checked; returns local. Raises
    ConfigError when a file differs from its manifest (damaged in the bucket: nothing a rerun could fix)."""
    final = storage.path(final)
    manifest_bytes = storage.read_bytes(final / MANIFEST)
    expected = expected_sha256(json.loads(manifest_bytes))
    staging = local.parent / f".{local.name}.fetch-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        names = sorted(p.name for p in final.iterdir() if p.name != MANIFEST)
        for name in names:
            got = storage.download(final / name, staging / name)
            if name in expected and got != expected.pop(name):
                raise ConfigError(
                    f"{final / name} does not match the sha256 in its {MANIFEST} (damaged in the bucket): delete "
                    f"{final} and rerun to prepare it again"
                )
        if expected:
            raise ConfigError(
                f"{final} lacks {sorted(expected)}, which its {MANIFEST} names: delete {final} and rerun to prepare "
                "it again"
            )
        (staging / MANIFEST).write_bytes(manifest_bytes)
        storage.publish_directory(staging, local, MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local
