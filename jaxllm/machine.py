"""What machine this is: the CPU's model and instruction-set flags, and the per-machine cache folder.

Programs compiled and speeds measured on one CPU must not be reused on another that lacks its instructions (a
home directory shared across machines), so everything cached per machine lives under a folder named by `tag()`.
Imports nothing but the standard library: jaxllm/__init__.py uses it before JAX starts.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import platform
import time

# the flags that decide which of XLA:CPU's kernels are fast, reported beside every figure
NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "asimd", "sve")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().split("\n\n")[0].splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def cpu_model() -> str:
    """The model name, with its family and model numbers where the name is generic (a virtual machine's often is)."""
    info = _cpuinfo()
    name = info.get("model name") or info.get("Model") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def cpu_flags() -> list[str]:
    """The notable instruction-set flags this CPU has (see NOTABLE_FLAGS)."""
    flags = set((_cpuinfo().get("flags") or _cpuinfo().get("Features") or "").split())
    return [f for f in NOTABLE_FLAGS if f in flags]


def describe() -> str:
    """'<CPU model>, <cores> cores, flags a b c': the machine named beside a figure."""
    return f"{cpu_model()}, {os.cpu_count()} cores, flags {' '.join(cpu_flags()) or 'none notable'}"


def tag() -> str:
    """A short name for this CPU model and its whole instruction set."""
    info = _cpuinfo()
    key = platform.machine() + platform.processor() + info.get("model name", "") + info.get("flags", "")
    return f"{platform.machine()}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def cache_dir() -> pathlib.Path:
    """$XDG_CACHE_HOME/jaxllm/<tag> (default ~/.cache/jaxllm/<tag>): safe to delete at any time."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "jaxllm" / tag()


_IMPORTED_AT = time.time()


@functools.cache
def process_start() -> float:
    """When this process started (seconds since the epoch), from /proc on Linux; elsewhere, when this module was
    imported (it is imported first thing, so the two differ by the interpreter's start-up)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # the command name may contain spaces: skip past it
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks
    except (OSError, StopIteration, ValueError, IndexError):
        return _IMPORTED_AT
