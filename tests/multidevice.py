"""Runs a test's multi-device half in a subprocess with its own fake CPU devices.

XLA_FLAGS must be set before jax starts its backend, and the rest of the suite runs on one device, so a test that
needs 8 devices runs a worker script (`python tests/test_x.py ARGS`) in a fresh interpreter and reads back the JSON
the worker prints as its last line of output.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def env(devices: int) -> dict[str, str]:
    """The environment for a subprocess with `devices` CPU devices and this checkout importable. LLVM's
    optimisations are off: they do not change the partitioned HLO the tests inspect, and cut compile time 4x."""
    flags = (
        f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true"
    )
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def run_worker(script: str, *args: str, devices: int = 8, timeout: float = 300) -> dict:
    proc = subprocess.run(
        [sys.executable, script, *args], env=env(devices), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"worker {script} {args} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
