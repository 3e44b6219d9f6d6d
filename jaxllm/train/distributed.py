"""Joining a multi-process run: one process per host, every process running the same command.

`initialize(cfg.distributed)` must run before anything touches a device. With `coordinator` set it joins that
coordinator explicitly (any cluster, or local processes on 127.0.0.1); without one it lets
`jax.distributed.initialize()` detect a cluster (TPU VM pod slices, SLURM, Open MPI) and stays a single process when
there is none. It is not a launcher: starting one process per host is the cluster's (or the user's) job.
"""

from __future__ import annotations

import jax

from jaxllm.config import ConfigError, DistributedConfig


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
