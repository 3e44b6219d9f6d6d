"""pass@1 and pass@k on the held-out verifiable tasks (jaxllm.posttrain.tasks), with 95% intervals.

A reply is the model's answer to the task's prompt as one user turn of the chat template, scored by the task's
own checker. pass@1 is greedy; its interval is Wilson's score interval, which stays inside [0, 1] and is honest at
0 and n successes, where pass rates of small models sit. Two stages answered the same problems, so whether one
beats the other is McNemar's exact test on the problems only one of them got right (`mcnemar_p`). pass@k samples
SAMPLES replies a problem at temperature 1 (the model's own distribution, the one reinforcement learning samples)
and takes the unbiased estimator of Chen et al. 2021 (`pass_at_k`); its interval is a percentile bootstrap over
the problems. The same samples give the majority vote (maj@SAMPLES, self-consistency): the answer most of a
problem's replies give, scored by its checker: what sharpening the model's distribution to its most frequent
answer would score. DPO on the model's own mistakes and GRPO mostly sharpen, so where maj@SAMPLES is no higher than
greedy pass@1 they have little to gain: the right answers among the samples are a minority the model cannot yet
tell from its wrong ones.
"""

from __future__ import annotations

import collections
import math
from typing import Callable

import numpy as np

from jaxllm.posttrain import tasks

PER_TASK = 200  # held-out problems scored per task: a 95% interval of at most +-7 points (+-3 over all six)
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

SAMPLES = 8  # sampled replies a problem for pass@k
K = 4  # pass@K from SAMPLES samples: the estimator averages over every K of them, steadier than K = SAMPLES
BOOTSTRAP = 2000  # resamples of the problems for pass@k's interval


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k replies drawn without replacement from n, c of them right, is right:
    1 - C(n - c, k) / C(n, k) (unbiased for pass@k; Chen et al. 2021)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def bootstrap_interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of per-problem values."""
    values = np.asarray(values, np.float64)
    means = values[np.random.default_rng(seed).integers(0, len(values), (BOOTSTRAP, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def majority_reply(problem: tasks.Problem, replies: list[str]) -> str:
    """The first of the replies giving the answer most of them give (tasks.answer_key); ties go to the answer
    sampled first."""
    keys = [tasks.answer_key(problem, r) for r in replies]
    winner = collections.Counter(keys).most_common(1)[0][0]  # equal counts keep the order first seen
    return replies[keys.index(winner)]


def _sampled_figures(counts: list[int], votes: list[bool], k: int) -> dict:
    values = [pass_at_k(SAMPLES, c, k) for c in counts]
    return {
        "pass@k": float(np.mean(values)),
        "k": k,
        "interval_95": list(bootstrap_interval(values)),
        "n": len(values),
        "majority": sum(votes) / len(votes),
        "majority_interval_95": list(wilson(sum(votes), len(votes))),
    }


def sampled_pass(
    problems: dict[str, list[tasks.Problem]], sample: Callable[[list[str]], list[str]], k: int = K
) -> dict:
    """{task: {'pass@k', 'k', 'interval_95', 'n', 'majority', 'majority_interval_95'}} plus 'all'; sample(prompts)
    -> one sampled reply a prompt, each row drawn on its own (it is given every prompt SAMPLES times)."""
    out, every_count, every_vote = {}, [], []
    for name, group in problems.items():
        replies = sample([p.prompt for p in group] * SAMPLES)
        own = [replies[i :: len(group)] for i in range(len(group))]  # problem i's SAMPLES replies
        counts = [sum(tasks.is_correct(p, r) for r in rs) for p, rs in zip(group, own)]
        votes = [bool(tasks.is_correct(p, majority_reply(p, rs))) for p, rs in zip(group, own)]
        out[name] = _sampled_figures(counts, votes, k)
        every_count, every_vote = every_count + counts, every_vote + votes
    out["all"] = _sampled_figures(every_count, every_vote, k)
    return out
