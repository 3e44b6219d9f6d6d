"""What every command shares: user errors become one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import select
import sys
from typing import Callable

from jaxllm.config import ConfigError


class Stopped(Exception):
    """A command stopped early on purpose with its work saved (a run preempted by SIGTERM, or Ctrl-C): run_main
    prints the message as one line and returns `status`."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def run_main(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Calls main(argv); a ConfigError prints `error: <message>` and returns 2, Stopped its status, Ctrl-C 130, and
    a reader that left (`| head`) 141 quietly, as the shell reports a command SIGPIPE ended."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _reader_left():
            raise  # a pipe to a worker or a socket broke: a fault to show, not the end of the output
        # stdout's last buffered bytes would fail again when Python flushes it at exit, with a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _reader_left() -> bool:
    """Whether stdout is a pipe whose reader closed it (poll flags such a pipe's write end with an error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is no file
        return False


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors (unknown, missing or malformed flags) are one line and exit status 2 through
    run_main, like every other bad input, instead of argparse's usage block."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")
