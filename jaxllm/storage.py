"""Run directories on local disk or object storage (gs://): one path type for both, whole-file writes that never
leave half a file, and a retry for the writes that would otherwise be lost.

A local path is a pathlib.Path; a gs:// one an etils.epath.Path, whose gs:// backend here is gcsfs (fsspec: etils
uses tf.io.gfile only where TensorFlow is installed, and jaxllm runs without it); Orbax lists and marks its
checkpoints through the same epath, and TensorStore's GCS driver writes their arrays. Object storage has no rename
and no append: an object appears whole when its upload ends, so uploading to the final name is the publish step of
write-then-publish there, and a file that grows (metrics.jsonl) is kept locally and uploaded whole
(jaxllm.train.run_files). A folder of files is published there by uploading every file and then the one a
reader trusts (publish_directory), where a local disk renames the whole folder into place: prepared data
(jaxllm.data.prepare) is published so.

Testing against an emulator: STORAGE_EMULATOR_HOST (gcsfs), FSSPEC_GCS_TOKEN=anon, TENSORSTORE_GCS_HTTP_URL and
GOOGLE_AUTH_TOKEN_FOR_TESTING (TensorStore); jaxllm.bench.gcs_emulator starts one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pathlib
import shutil
import tempfile
import time
from typing import Callable, TypeVar

from etils import epath

from jaxllm import machine
from jaxllm.config import ConfigError

REMOTE = "gs://"
RETRIES = 4  # our own attempts at a whole-file write, each after gcsfs's own retries of every request
RETRY_S = 2.0  # the first wait between them, doubled after each
T = TypeVar("T")


class StorageError(ConfigError):
    """Storage that stayed unreachable through every retry: the work done so far is kept for a rerun, unlike
    after bad input."""


def is_remote(p: str | os.PathLike) -> bool:
    return os.fspath(p).startswith(REMOTE)


def path(p: str | os.PathLike) -> epath.Path:
    """p as a path: pathlib.Path when local, epath.Path for gs://; refuses other schemes, and gs:// without gcsfs.
    Give it the string a user typed: pathlib.Path('gs://b/x') is already the local path 'gs:/b/x'."""
    text = os.fspath(p)
    if is_remote(text):
        if importlib.util.find_spec("gcsfs") is None:
            raise ConfigError(f"{text}: gs:// paths need gcsfs: pip install -e '.[gcs]' (or pip install gcsfs)")
        return epath.Path(text)
    if "://" in text:
        raise ConfigError(f"{text}: only local paths and gs://bucket/... are supported; use one of them")
    return pathlib.Path(text)


def resolve(p: str | os.PathLike) -> str:
    """The absolute form of p, as text: a gs:// path as it is, a local one resolved."""
    return os.fspath(p) if is_remote(p) else str(pathlib.Path(p).resolve())


def name(p: str | os.PathLike) -> str:
    """The last part of p's absolute form (a run's name in tables)."""
    return resolve(p).rstrip("/").rsplit("/", 1)[-1]


def retrying(call: Callable[[], T], what: str, action: str = "write") -> T:
    """call(), tried again after a transient failure (the service unavailable, throttling, a dropped connection:
    what gcsfs's own retries of a request gave up on); a missing file or bad input is not retried. Raises
    StorageError naming `action` and `what` when every attempt failed."""
    for attempt in range(RETRIES):
        try:
            return call()
        except (FileNotFoundError, ConfigError, PermissionError, ValueError):
            raise
        except Exception as e:  # gcsfs raises its HttpError, aiohttp's and requests' errors, OSError
            if attempt == RETRIES - 1:
                raise StorageError(
                    f"cannot {action} {what} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}) "
                    f"after {RETRIES} attempts: check that the storage is reachable and writable, then rerun"
                ) from None
            time.sleep(RETRY_S * 2**attempt)
    raise AssertionError("unreachable")


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    """Writes p whole or not at all: locally a temporary file renamed over it; on object storage one upload."""
    p = path(p)
    if is_remote(p):
        retrying(lambda: p.write_bytes(data), str(p))
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # a marker written after p must never name bytes that a power loss could take back
    tmp.replace(p)


def read_bytes(p: str | os.PathLike) -> bytes:
    """p's bytes; on object storage retried as writes are."""
    p = path(p)
    return retrying(p.read_bytes, str(p), "read") if is_remote(p) else p.read_bytes()


def _gcs():
    import fsspec  # noqa: PLC0415 (gcsfs, its gs:// backend, comes with the gcs extra only)

    return fsspec.filesystem("gcs")


def upload(source: pathlib.Path, p: str | os.PathLike) -> None:
    """Copies the local file source to gs:// path p, streamed in chunks (a shard may not fit in memory); the
    object appears once its last chunk is in, and a failed upload is cancelled, so p is whole or absent."""
    retrying(lambda: _gcs().put_file(str(source), os.fspath(p)), os.fspath(p))


def download(p: str | os.PathLike, target: pathlib.Path) -> str:
    """Copies gs:// path p to the local file target, streamed (a partial file is removed on failure); returns the
    sha256 of what arrived."""
    retrying(lambda: _gcs().get_file(os.fspath(p), str(target)), os.fspath(p), "download")
    return file_sha256(target)


def file_sha256(path: pathlib.Path) -> str:
    """The sha256 of a local file, read in blocks (a token shard may not fit in memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def publish_directory(source: pathlib.Path, dest: str | os.PathLike, last: str) -> bool:
    """Publishes the local folder of files `source` as `dest`, whose file `last` is what a reader trusts: locally
    source renamed into place whole; on object storage, which cannot rename, every other file uploaded, then
    `last`, so a publisher killed midway leaves no `last`. Returns False, publishing nothing, when dest already has
    `last` (another process published it first)."""
    dest = path(dest)
    if not is_remote(dest):
        try:
            os.replace(source, dest)  # onto a missing or empty folder only
        except OSError:
            if not (dest / last).is_file():
                raise
            return False
        return True
    if (dest / last).is_file():
        return False
    for f in sorted(source.iterdir(), key=lambda f: f.name == last):  # `last` last
        upload(f, dest / f.name)
    return True


def remove_tree(p: str | os.PathLike) -> None:
    """Deletes the folder p and everything in it, if there: locally or on object storage (every object under it);
    a failure leaves only garbage that no reader trusts, so it is not raised."""
    p = path(p)
    if not is_remote(p):
        shutil.rmtree(p, ignore_errors=True)
        return
    try:
        if p.exists():
            p.rmtree()
    except Exception:  # a leftover work folder costs storage, not correctness
        logging.getLogger(__name__).warning("could not delete %s; delete it by hand", p)


def append_line(p: str | os.PathLike, line: str) -> None:
    """Adds a line to a small text file; on object storage, which cannot append, by rewriting it whole."""
    p = path(p)
    if is_remote(p):
        before = p.read_bytes() if p.exists() else b""
        write_bytes(p, before + (line + "\n").encode())
        return
    with open(p, "a") as f:
        f.write(line + "\n")


def local_cache(run_dir: str | os.PathLike, folder: str = "remote_runs") -> pathlib.Path:
    """A local folder for files a reader needs on disk (a checkpoint's tokenizer, prepared data's token shards):
    run_dir itself when local, a folder of this machine's cache (under `folder`) named after it when on object
    storage."""
    if not is_remote(run_dir):
        return pathlib.Path(run_dir)
    key = hashlib.sha256(os.fspath(run_dir).rstrip("/").encode()).hexdigest()[:16]
    out = machine.cache_dir() / folder / key
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_writable(run_dir: str | os.PathLike, flag: str = "--run_dir") -> None:
    """Refuses a run directory that is a file or cannot be written (a real write: permission bits say nothing for
    root or a read-only mount, and only a write tells that a bucket exists and takes this machine's writes)."""
    p = path(run_dir)
    if is_remote(p):
        probe = p / f".write_probe.{os.getpid()}"
        gcsfs_log = logging.getLogger("gcsfs")
        level = gcsfs_log.level
        gcsfs_log.setLevel(logging.CRITICAL)  # its traceback of the last retry would head the one-line error below
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except (
            Exception
        ) as e:  # after gcsfs's own retries (about 30 s): the bucket is missing, forbidden or unreachable
            raise StorageError(
                f"{flag}={p} cannot be written ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                ": check the bucket's name, your credentials (gcloud auth application-default login) and the network"
            ) from None
        finally:
            gcsfs_log.setLevel(level)
        return
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag}={p} is a file, not a directory: choose another path")
    probe_dir = p if p.exists() else next(q for q in p.absolute().parents if q.exists())
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as e:
        raise ConfigError(
            f"{flag}={p}: {probe_dir} is not writable ({e.strerror}); choose another path or fix its permissions"
        ) from None
