"""`python -m jaxllm.<command>` restarts once with glibc's malloc on transparent huge pages; a library import never
does (see jaxllm/__init__.py)."""

import os
import subprocess
import sys

import pytest

PRINT_TUNABLES = "import jaxllm, os; print(os.environ.get('GLIBC_TUNABLES'))"
AS_MODULE = "import sys; sys.argv[0] = '-m'; " + PRINT_TUNABLES  # what `python -m` shows while importing the package


def tunables_seen(code: str, tunables: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


glibc = pytest.mark.skipif(not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"), reason="not glibc")


@glibc
def test_commands_restart_with_huge_pages_keeping_the_users_tunables():
    assert tunables_seen(AS_MODULE, None) == "glibc.malloc.hugetlb=1"
    assert tunables_seen(AS_MODULE, "glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert tunables_seen(AS_MODULE, "glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"  # the user's choice


def test_a_library_import_changes_nothing():
    assert tunables_seen(PRINT_TUNABLES, None) == "None"
