"""Joining a multi-process run: one process per host, every process running the same command.

`initialize(cfg.distributed)` must run before anything touches a device. With `coordinator` set it joins that
coordinator explicitly (any cluster, or local processes on 127.0.0.1); without one it lets
`jax.distributed.initialize()` detect a cluster (TPU VM pod slices, SLURM, Open MPI) and stays a single process when
there is none. It is not a launcher: starting one process per host is the cluster's (or the user's) job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Callable

import jax
from jax._src import distributed as jax_distributed

from jaxllm.config import ConfigError, DistributedConfig
from jaxllm.train.supervisor import EXIT_PEER_LOST, lost_line, steps_reported


def initialize(cfg: DistributedConfig) -> None:
    """Joins the run described by cfg (or a detected cluster); a no-op for a plain single-process run.

    A peer that does not show up within cfg.timeout_s, or stops sending heartbeats for that long (it died), makes
    the coordination service end every other process with an error instead of leaving them blocked in a collective.
    """
    timeouts = {"initialization_timeout": cfg.timeout_s, "heartbeat_timeout_seconds": cfg.timeout_s}
    if cfg.coordinator:
        if not 0 <= cfg.process_id < cfg.num_processes:
            raise ConfigError(
                f"distributed.process_id={cfg.process_id} is not in [0, distributed.num_processes="
                f"{cfg.num_processes}): number the processes 0..N-1"
            )
        jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id, **timeouts)
        return
    if cfg.num_processes != 1 or cfg.process_id != 0:
        raise ConfigError(
            f"distributed.num_processes={cfg.num_processes}, process_id={cfg.process_id} need "
            "--distributed.coordinator=HOST:PORT (process 0's address), or none of the three on a "
            "cluster JAX detects (TPU VM pod, SLURM, Open MPI)"
        )
    try:
        jax.distributed.initialize(**timeouts)
    except RuntimeError as e:
        # JAX already runs in this process (a library caller such as a test or a notebook called the command):
        # it stays the process it is; the commands themselves call this before anything touches JAX
        if "must be called before" not in str(e):
            raise
    except ValueError as e:
        # jax's own signal that no cluster environment was detected: this is a single-process run.
        if "coordinator_address" not in str(e):
            raise


def lost_processes(wait_s: float = 3.0) -> list[int] | None:
    """The processes the coordination service no longer counts as alive, or None when it does not say within
    wait_s (it answers once every live process asks, or once the dead one missed its heartbeats: minutes); [0] when
    the service itself is gone (it lives in process 0)."""
    answer: list = []

    def ask():
        try:
            answer.append(jax_distributed.global_state.client.get_live_nodes(list(range(jax.process_count()))))
        except Exception:  # any failure to reach the service means that its host, process 0, is gone
            answer.append(None)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(wait_s)
    if not answer:
        return None
    if answer[0] is None:
        return [0]
    return sorted(set(range(jax.process_count())) - set(answer[0]))


def end_on_lost_peer(error: Exception, step: int) -> None:
    """Ends this process at once when a multi-process run failed in a collective because a peer died: one line
    naming the lost processes, exit status EXIT_PEER_LOST. A normal exit would wait in JAX's shutdown barrier for
    the dead peer until the heartbeat timeout (minutes) and then abort."""
    lost = lost_processes()
    if not lost and jax.process_count() == 2:  # the service cannot tell yet, but there is only one other
        lost = [1 - jax.process_index()]
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    print(lost_line(jax.process_index(), lost or [], step, first), file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_LOST)


@contextlib.contextmanager
def peers_watched(step: Callable[[], int]):
    """In a multi-process run, a runtime error in the loop (a collective failing because a peer died) ends this
    process at once with a line naming the lost process (end_on_lost_peer); Python errors (a diverged loss) pass.
    The step is also reported to the supervising parent, which names it when JAX aborts this process (the
    coordinator was lost: jaxllm.train.supervisor)."""
    try:
        with steps_reported(step):
            yield
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() > 1:
            end_on_lost_peer(e, step())
        raise
