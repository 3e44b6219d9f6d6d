"""Stopping a run cleanly on a signal: SIGTERM (what TPU VM and Kubernetes preemption send) or SIGINT (Ctrl-C).

While the step loop runs, `Preemption.requested(step)` is asked after every step; once it says yes, the loop saves
that step, waits for the save to commit and raises `jaxllm.cli.Stopped`, which the command turns into exit status
`EXIT_PREEMPTED` (75, EX_TEMPFAIL: rerun the same command to resume). The bound on the time from signal to exit is
one step plus one save. One process: a Python handler sets a flag. Several: JAX's preemption service (started by
jax.distributed.initialize) catches SIGTERM on any host and agrees on a step at which every host stops
(`reached_preemption_sync_point`); Ctrl-C is turned into a SIGTERM to this process so that it takes the same path.
A second signal ends the process at once (the default action). Before the loop starts (data preparation,
compilation) and after it ends, signals keep their default action: there is nothing to save. `Saves` says at which
steps the loop saves: by steps, by time, and the step a requested stop happens at.
"""

from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """A context manager around the step loop; `requested(step)` must be called after every step on every host."""

    def __init__(self):
        self.signal: str | None = None  # the name of the signal that asked to stop, on this process
        self._previous: dict = {}
        self._synced = jax.process_count() > 1

    def __enter__(self) -> Preemption:
        # several processes: JAX's preemption service owns SIGTERM; a Ctrl-C becomes a SIGTERM
        for sig in (signal.SIGINT,) if self._synced else SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame) -> None:
        self.signal = signal.Signals(signum).name
        for sig in self._previous:  # a second signal takes the default action: the user insists
            signal.signal(sig, signal.SIG_DFL)
        if self._synced:
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        """Whether the run must stop after `step` (the same answer on every host)."""
        if self._synced:
            stop = multihost_utils.reached_preemption_sync_point(step)
            if stop and self.signal is None:
                self.signal = "SIGTERM"  # a notice that arrived here or on another host
            return stop
        return self.signal is not None


class Saves:
    """When the loop saves: every checkpoint_every steps, when checkpoint_minutes passed since the last save, and
    when a signal asks the run to stop. Only at steps a resume can start from (RL reuses a sample for
    updates_per_sample steps); the time is process 0's, shared at log steps, so that every host saves alike."""

    def __init__(self, t, updates_per_sample: int):
        self.t, self.every = t, updates_per_sample
        self.last = time.monotonic()
        self.stopping: int | None = None  # the step a requested stop happens at

    def due(self, done: int) -> bool:
        if done % self.every:
            return False
        if done % self.t.checkpoint_every == 0:
            return True
        if not self.t.checkpoint_minutes or done % self.t.log_every:
            return False
        late = time.monotonic() - self.last >= 60 * self.t.checkpoint_minutes
        if jax.process_count() > 1:
            late = bool(multihost_utils.broadcast_one_to_all(np.int32(late)))
        return late

    def saved(self) -> None:
        self.last = time.monotonic()

    def stop_after(self, done: int, preemption: Preemption) -> bool:
        """Whether the run stops after this step: at the first step a resume can start from once a stop was
        asked (asked of every host at every step, as JAX's preemption sync requires)."""
        if preemption.requested(done) and self.stopping is None:
            self.stopping = -(-done // self.every) * self.every
        return done == self.stopping
