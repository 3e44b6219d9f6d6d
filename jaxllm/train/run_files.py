"""A run's own files (metrics.jsonl, goodput.jsonl, TensorBoard events, config.json, the plan, the plots): where the
loop writes them and how they reach the run directory. Checkpoints are not among them: Orbax writes those.

A local run directory holds them in place and `publish` does nothing. For a gs:// one, which cannot append or
rename, they live in a local scratch folder of this process: at the start the files the run reads back (its logs,
config and plan) are downloaded into it, so that a resumed run continues them; `publish` uploads every file that
changed since it last reached the run directory, whole (one upload: the object appears complete or not at all).
The loop publishes at log intervals (at most every PUBLISH_S), after each checkpoint save, and when the run ends
or stops; a failed upload is tried again at the next publish (the local file still holds every record), and the
last one must succeed. A run killed outright loses the records since its last publish, as its steps since its
last checkpoint. Only process 0 publishes: the other processes write none of these files.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import time

import jax

from jaxllm import storage
from jaxllm.config import ConfigError

PULLED = ("metrics.jsonl", "goodput.jsonl", "config.json", "plan.json")  # what a resumed run reads back
PUBLISH_S = 30.0  # log intervals publish at most this often; saves and the end always do


class RunFiles:
    def __init__(self, run_dir, say=print):
        self.root = storage.path(run_dir)  # the run directory: checkpoints, and where the files end up
        self.remote = storage.is_remote(self.root)
        self.local = pathlib.Path(tempfile.mkdtemp(prefix="jaxllm-run-")) if self.remote else self.root
        self.say = say
        self.sent: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) as it last reached the run directory
        self.last_publish = time.monotonic()

    def __enter__(self) -> RunFiles:
        if self.remote:
            for name in PULLED:
                if (self.root / name).exists():
                    (self.local / name).write_bytes(storage.read_bytes(self.root / name))
                    self.sent[name] = _stamp(self.local / name)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.publish(final=True)
        except ConfigError:
            if kind is None:
                raise
        finally:
            if self.remote:
                shutil.rmtree(self.local, ignore_errors=True)

    def publish(self, final: bool = True) -> None:
        """Uploads the files that changed; final=False (a log interval's) at most every PUBLISH_S, and a failure
        only said (the next publish sends the whole file again); a final one raises ConfigError on failure."""
        now = time.monotonic()
        if not self.remote or jax.process_index() != 0 or (not final and now - self.last_publish < PUBLISH_S):
            return
        self.last_publish = now
        for f in sorted(p for p in self.local.iterdir() if p.is_file()):
            stamp = _stamp(f)
            if self.sent.get(f.name) == stamp:
                continue
            try:
                storage.write_bytes(self.root / f.name, f.read_bytes())
            except ConfigError as e:
                if final:
                    raise
                self.say(f"warning: {e}; it will be sent again at the next publish")
                continue
            self.sent[f.name] = stamp


def _stamp(f: pathlib.Path) -> tuple[int, int]:
    st = f.stat()
    return st.st_size, st.st_mtime_ns
