"""jaxllm: build a language model from raw text to an aligned chat model, in JAX/Flax NNX.

Run as `python -m jaxllm.<command>`, the package prepares the process before JAX starts (never when imported as a
library): it keeps XLA's compiled programs on disk, and restarts once with huge pages for glibc's malloc.
"""

import os
import sys

from jaxllm import machine


def _keep_compiled_programs() -> None:
    """Keeps XLA's compiled programs on disk (JAX's persistent compilation cache), so that a command run again loads
    them instead of compiling. The folder is per CPU model and instruction set (jaxllm.machine.cache_dir): programs
    compiled for one CPU's vector instructions must not run on another. Programs that compiled in under 0.2 s are
    not kept (JAX's default threshold, 1 s, leaves out the decoding loop). A JAX_COMPILATION_CACHE_DIR of your own
    is used instead; JAX_ENABLE_COMPILATION_CACHE=false turns the cache off."""
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(machine.cache_dir() / "xla"))


def _restart_with_huge_pages() -> None:
    """On glibc, restarts the interpreter once with glibc's malloc asking for transparent huge pages
    (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; the tunable is read only at process start).

    Why: XLA:CPU allocates each execution's temporary buffers afresh, and glibc maps every block over 32 MB with
    mmap and unmaps it when freed, so each train step would fault its temporaries back in 4 KB at a time. Nothing
    changes where THP is off or where the user set glibc.malloc.hugetlb already."""
    if "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr on this platform
        return
    if not libc.startswith("glibc"):
        return
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})


if sys.argv[:1] == ["-m"]:  # while `python -m` imports this package, argv[0] is "-m"
    _keep_compiled_programs()  # before the restart: its environment carries over
    _restart_with_huge_pages()
