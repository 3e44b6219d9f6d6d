"""pass@1 on the held-out verifiable tasks (jaxllm.posttrain.tasks), with Wilson 95% intervals.

A reply is the model's greedy answer to the task's prompt as one user turn of the chat template, scored by the
task's own checker. The interval is Wilson's score interval, which stays inside [0, 1] and is honest at 0 and n
successes, where pass rates of small models sit.
"""

from __future__ import annotations

import math
from typing import Callable

from jaxllm.posttrain import tasks

PER_TASK = 64  # held-out problems scored per task: a 95% interval of at most +-12 points
Z_95 = 1.959963984540054  # the normal quantile of 0.975


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def heldout_problems(val_fraction: float, per_task: int = PER_TASK) -> dict[str, list[tasks.Problem]]:
    """The first per_task held-out problems of every embedded task."""
    return {name: tasks.load(f"tasks:{name}", val_fraction)[1][:per_task] for name in tasks.EMBEDDED}


def pass_at_1(problems: dict[str, list[tasks.Problem]], reply: Callable[[list[str]], list[str]]) -> dict:
    """{task: {'pass@1', 'interval_95', 'n'}} plus 'all' over every task; reply(prompts) -> greedy replies."""
    out, right_all, n_all = {}, 0, 0
    for name, group in problems.items():
        answers = reply([p.prompt for p in group])
        right = sum(tasks.is_correct(p, a) for p, a in zip(group, answers))
        out[name] = {"pass@1": right / len(group), "interval_95": list(wilson(right, len(group))), "n": len(group)}
        right_all, n_all = right_all + right, n_all + len(group)
    out["all"] = {"pass@1": right_all / n_all, "interval_95": list(wilson(right_all, n_all)), "n": n_all}
    return out
