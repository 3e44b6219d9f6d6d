"""Wall time per stage of a run in this process, measured by wrapping the functions that do each stage: a benchmark's
instrument (the data bench times the pipeline's driver with it), never installed outside a benchmark's process.

Times are exclusive: a stage's time leaves out the stages timed inside it (the sources read while the engine's map
pulls chunks count as reading, not cleaning), so the stages add up to at most the run's wall time. A generator
function's stage counts the time spent inside each of its `next` calls.
"""

from __future__ import annotations

import collections
import functools
import inspect
import time
from typing import Any, Callable


class StageClock:
    def __init__(self):
        self.seconds: collections.Counter[str] = collections.Counter()
        self._nested: list[float] = []  # time of the stages timed inside each open one

    def _timed(self, stage: str, call: Callable[[], Any]) -> Any:
        self._nested.append(0.0)
        start = time.perf_counter()
        try:
            return call()
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[stage] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        """Replaces owner.name (a module's function or a class's method) by one timed as `stage`."""
        fn = getattr(owner, name)
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator(*args, **kwargs):
                it, done = fn(*args, **kwargs), object()
                try:
                    while (item := self._timed(stage, lambda: next(it, done))) is not done:
                        yield item
                finally:
                    it.close()

            setattr(owner, name, generator)
            return

        @functools.wraps(fn)
        def function(*args, **kwargs):
            return self._timed(stage, lambda: fn(*args, **kwargs))

        setattr(owner, name, function)
