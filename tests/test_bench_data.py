"""The data bench's stage clock: each stage's time excludes the stages timed inside it, a generator's counts only
the time inside its `next` calls, so the stages add up to the wall time they cover."""

from __future__ import annotations

import types

from jaxllm.bench import stage_clock
from jaxllm.bench.stage_clock import StageClock


def test_stage_times_are_exclusive_and_add_up(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(stage_clock.time, "perf_counter", lambda: now[0])
    work = types.SimpleNamespace()

    def inner():
        now[0] += 2

    def reading():
        for i in range(3):
            now[0] += 1
            yield i

    def outer():
        now[0] += 5
        work.inner()
        for _ in work.reading():
            now[0] += 10  # the consumer's own time: outer's, not reading's
        work.inner()
        return "done"

    work.inner, work.reading, work.outer = inner, reading, outer
    clock = StageClock()
    for name in ("inner", "reading", "outer"):
        clock.wrap(work, name, name)
    assert work.outer() == "done"
    assert dict(clock.seconds) == {"inner": 4.0, "reading": 3.0, "outer": 35.0}
    assert sum(clock.seconds.values()) == now[0] == 42.0
