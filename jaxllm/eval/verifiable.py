"""pass@1 on the held-out verifiable tasks (jaxllm.posttrain.tasks), with Wilson 95% intervals.

A reply is the model's greedy answer to the task's prompt as one user turn of the chat template, scored by the
task's own checker. The interval is Wilson's score interval, which stays inside [0, 1] and is honest at 0 and n
successes, where pass rates of small models sit. Two stages answered the same problems, so whether one beats
the other is McNemar's exact test on the problems only one of them got right (`mcnemar_p`).
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
        correct = [bool(tasks.is_correct(p, a)) for p, a in zip(group, answers)]
        right = sum(correct)
        out[name] = {
            "pass@1": right / len(group),
            "interval_95": list(wilson(right, len(group))),
            "n": len(group),
            "correct": correct,
        }
        right_all, n_all = right_all + right, n_all + len(group)
    out["all"] = {
        "pass@1": right_all / n_all,
        "interval_95": list(wilson(right_all, n_all)),
        "n": n_all,
        "correct": [c for name in problems for c in out[name]["correct"]],
    }
    return out


def mcnemar_p(before: list[bool], after: list[bool]) -> float:
    """Two-sided exact McNemar test that two models solving the same problems pass equally often: the binomial
    test of the problems only one of them solved."""
    gained = sum(a and not b for b, a in zip(before, after))
    lost = sum(b and not a for b, a in zip(before, after))
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


SIGNIFICANCE = 0.05  # a stage's pass@1 differs from the one before it when McNemar's p is below this
