"""`python -m jaxllm.<command>` restarts once with glibc's malloc on transparent huge pages and keeps compiled
programs on disk; a library import does neither (see jaxllm/__init__.py)."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from jaxllm import machine

PRINT_TUNABLES = "import jaxllm, os; print(os.environ.get('GLIBC_TUNABLES'))"
AS_MODULE = "import sys; sys.argv[0] = '-m'; " + PRINT_TUNABLES  # what `python -m` shows while importing the package


def seen(code: str, **env_vars: str | None) -> str:
    """What `code` prints, run with the environment's variables but env_vars (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in env_vars}
    env |= {k: v for k, v in env_vars.items() if v is not None}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


glibc = pytest.mark.skipif(not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"), reason="not glibc")


@glibc
def test_commands_restart_with_huge_pages_keeping_the_users_tunables():
    assert seen(AS_MODULE, GLIBC_TUNABLES=None) == "glibc.malloc.hugetlb=1"
    arena = "glibc.malloc.arena_max=2"
    assert seen(AS_MODULE, GLIBC_TUNABLES=arena) == f"{arena}:glibc.malloc.hugetlb=1"
    assert seen(AS_MODULE, GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"  # the user's choice


def test_commands_keep_compiled_programs_in_a_folder_per_cpu_unless_told_where(tmp_path):
    as_module = AS_MODULE.replace("os.environ.get('GLIBC_TUNABLES')", "os.environ.get('JAX_COMPILATION_CACHE_DIR')")
    folder = pathlib.Path(seen(as_module, JAX_COMPILATION_CACHE_DIR=None, XDG_CACHE_HOME=str(tmp_path)))
    assert folder == tmp_path / "jaxllm" / machine.tag() / "xla" and machine.tag().startswith(platform.machine())
    assert seen(as_module, JAX_COMPILATION_CACHE_DIR="/somewhere/else") == "/somewhere/else"


def test_a_library_import_changes_nothing():
    assert seen(PRINT_TUNABLES, GLIBC_TUNABLES=None) == "None"
    library = PRINT_TUNABLES.replace("GLIBC_TUNABLES", "JAX_COMPILATION_CACHE_DIR")
    assert seen(library, JAX_COMPILATION_CACHE_DIR=None) == "None"
