"""A light parent for each process of a multi-process run, so that losing process 0 (the coordinator) ends the run
with one line and status EXIT_PEER_LOST instead of a native abort.

JAX's distributed client aborts its process (SIGABRT, status 134, a native stack dump) within a fraction of a second
once the coordination service, which lives in process 0, is gone or reports a dead process; jaxlib 0.10 has no
switch for it, and its Python `missed_heartbeat_callback` cannot be called (casting the status fails:
std::bad_cast). So a multi-process command started as `python -m jaxllm.<command>` forks just before JAX starts
(as jax.distributed.initialize requires, so the fork is safe): the child goes on with the command, the parent
(the pid you started) replaces itself by this module, which imports no JAX. The child's stdout is the parent's;
its stderr is forwarded as it comes, except native warning and error records, held HOLD_S in case the fatal
record of an abort follows. SIGTERM and SIGINT are forwarded (preemption saves work as before), and the child dies
with the parent (kill -9 the process you started and both end). Linux only, and only for runs with an explicit
distributed.coordinator: a cluster JAX detects by itself (TPU VM pod, SLURM) cannot be told from one process
before JAX starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import signal
import sys
import threading
import time
from typing import Callable

from jaxllm.config import DistributedConfig

# The exit status of a process whose run lost a peer (sysexits' EX_UNAVAILABLE): restart every process, and the run
# resumes from its latest checkpoint.
EXIT_PEER_LOST = 69
POLL_S = 0.25  # how often the parent looks whether the child is gone while its stderr stays open
HOLD_S = 0.5  # how long a native warning or error record is held back in case the fatal record of an abort follows
STEP_FD = "JAXLLM_SUPERVISED_STEP_FD"  # set in the child: the file its latest step is written to, for the parent
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_NATIVE_RECORD = re.compile(rb"[WEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ \]]+:\d+\] ")  # absl's log line prefix
_ABORTED = b"the JAX distributed service detected fatal errors"
_SERVICE_GONE = b"Failed to send RPC to coordination service"
_NO_HEARTBEATS = re.compile(rb"stopped sending heartbeats\):\s*([\d\s,]+?)\s*The tasks")


def supervise(cfg: DistributedConfig) -> None:
    """In a multi-process run with an explicit coordinator started as `python -m jaxllm.<command>` on Linux: returns
    in a forked child that goes on with the command, while this process becomes the supervising parent (never
    returns). Returns at once elsewhere: one process, the child already, or jaxllm imported as a library. Call it
    before JAX starts."""
    main_module = getattr(sys.modules["__main__"].__spec__, "name", "")
    if cfg.num_processes < 2 or not cfg.coordinator or STEP_FD in os.environ or sys.platform != "linux":
        return
    if not main_module.startswith("jaxllm."):
        return
    stderr_read, stderr_write = os.pipe()
    steps = os.memfd_create("jaxllm-steps")
    sys.stdout.flush()
    sys.stderr.flush()
    parent, child = os.getpid(), os.fork()
    if child == 0:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the kernel ends it with us
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
        os.setpgid(0, 0)  # a Ctrl-C reaches the child once, forwarded by the parent, as the run's preemption expects
        os.dup2(stderr_write, 2)
        os.close(stderr_read)
        os.close(stderr_write)
        os.environ[STEP_FD] = str(steps)
        return
    os.close(stderr_write)
    os.set_inheritable(stderr_read, True)
    os.set_inheritable(steps, True)
    command = [str(cfg.process_id), str(child), str(stderr_read), str(steps)]
    os.execv(sys.executable, [sys.executable, "-m", __name__, *command])


@contextlib.contextmanager
def steps_reported(step: Callable[[], int], every_s: float = 0.1):
    """In the supervised child, writes step() to the parent's step file every every_s while the block runs, so that
    the parent can say after which step the run was lost; does nothing elsewhere."""
    if STEP_FD not in os.environ:
        yield
        return
    fd, stop = int(os.environ[STEP_FD]), threading.Event()

    def report():
        while True:
            os.pwrite(fd, b"%20d" % step(), 0)
            if stop.wait(every_s):
                return

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join()


def lost_processes(dump: bytes) -> list[int] | None:
    """The processes whose loss made JAX's distributed client abort, from the stderr of the abort; None when the
    text is not such an abort. [0] when the service itself (in process 0) stopped answering."""
    if _ABORTED not in dump:
        return None
    if _SERVICE_GONE in dump:
        return [0]
    listed = _NO_HEARTBEATS.search(dump)
    return sorted({int(n) for n in re.findall(rb"\d+", listed.group(1))}) if listed else None


def lost_line(process_id: int, lost: list[int], step: int | None, cause: str = "") -> str:
    """The one line a process prints when its run lost the processes `lost` ([]: not known which) after `step`
    (None: before its first step), with the error that showed it."""
    if lost == [0]:
        who = "the coordinator, process 0,"
    elif lost:
        who = f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))}"
    else:
        who = "a peer process"
    after = f" after step {step}" if step is not None else " before its first step"
    return (
        f"error: process {process_id} lost contact with {who}{after}{f' ({cause})' if cause else ''}; restart every "
        "process with the same command to resume from the latest checkpoint"
    )


def forward(fd: int, out, running: Callable[[], bool]) -> bytes:
    """Copies what the child writes to fd (its stderr) to out as it comes, in pieces ending at a newline or carriage
    return, until the pipe closes or the child is gone (a process it started may hold the pipe open); returns what
    it still held: native records (and what followed them) younger than HOLD_S, and everything from a fatal record
    (F) on."""
    unfinished, held, held_since, fatal = b"", b"", None, False
    while True:
        wait_s = POLL_S if held_since is None or fatal else min(POLL_S, held_since + HOLD_S - time.monotonic())
        if select.select([fd], [], [], max(0.0, wait_s))[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return held + unfinished
            *pieces, unfinished = re.split(rb"(?<=[\r\n])", unfinished + chunk)
            for piece in pieces:
                native = _NATIVE_RECORD.match(piece) is not None
                if held_since is None and native:
                    held_since = time.monotonic()
                fatal = fatal or native and piece.startswith(b"F")
                if held_since is None:
                    out.write(piece)
                else:
                    held += piece
        elif not running():  # nothing left to read from the child itself
            return held + unfinished
        if held_since is not None and not fatal and time.monotonic() >= held_since + HOLD_S:
            out.write(held)
            held, held_since = b"", None
        out.flush()


def _end_like(status: int) -> int:
    """The child's exit status as ours: a status is returned, a signal that ended the child ends this process."""
    if status >= 0:
        return status
    if -status != signal.SIGKILL:  # the one terminating signal whose action cannot be set (nor needs to be)
        signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
    return 128 - status  # not reached: the signal ended this process


def main(argv: list[str]) -> int:
    """The parent: argv is this process's id in the run, the child's pid, its stderr's pipe and its step file."""
    process_id, child, stderr_fd, steps_fd = map(int, argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: os.kill(child, signum))
    ended: list[int] = []  # the child's exit status, once it is gone

    def running() -> bool:
        pid, wait_status = os.waitpid(child, os.WNOHANG)
        ended.extend([os.waitstatus_to_exitcode(wait_status)] if pid else [])
        return not ended

    held = forward(stderr_fd, sys.stderr.buffer, running)
    if not ended:
        ended.append(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
    lost = lost_processes(held) if ended[0] == -signal.SIGABRT else None
    if lost is None:
        sys.stderr.buffer.write(held)
        sys.stderr.flush()
        return _end_like(ended[0])
    step = os.pread(steps_fd, 20, 0).strip()
    print(lost_line(process_id, lost, int(step) if step else None), file=sys.stderr, flush=True)
    return EXIT_PEER_LOST


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
