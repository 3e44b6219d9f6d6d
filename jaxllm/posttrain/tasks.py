"""Verifiable tasks: problems generated with exact answers, the checkers that score a reply, and wrong answers.

For: post-training data whose correctness a program decides (SFT targets, DPO pairs of a right and a wrong answer,
multiple choice, and later rewards), small enough that a model of a few hundred thousand parameters learns them on
a CPU in minutes. Not for: reading chat JSONL (jaxllm.posttrain.chat_data, which offers these as sources).

Sources (posttrain.conversations, posttrain.preferences):
  tasks                   every embedded task
  tasks:add+reverse       some of them (EMBEDDED's names, joined by + since a flag splits lists at commas)
  tasks:PATH.jsonl        the user's own: {"prompt": "...", "answer": "...", "checker": "exact"} a line, where the
                          optional checker is 'exact', 'numeric' or 'package.module:function' (reply, answer) -> bool

Each embedded task draws its problems from a seeded generator; a problem is held out by a hash of its prompt (the
hash pretraining splits documents by), so the splits never overlap and a prompt's split does not depend on how
many problems are drawn. Answers are computed when the problem is made, by Python itself for the expression task;
nothing a model writes is ever run.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import pathlib
import random
import re
import string
from typing import Callable

from jaxllm.config import ConfigError
from jaxllm.data.prepare import is_validation

PROBLEMS_PER_TASK = 10000  # drawn per embedded task, before the held-out split
REPLY_TOKENS = 16  # a reply to a task is scored on its first tokens: every embedded answer is shorter


@dataclasses.dataclass(frozen=True)
class Problem:
    task: str
    prompt: str
    answer: str
    checker: str = "exact"  # a name resolve_checker knows


def _first_line(reply: str) -> str:
    lines = reply.strip().splitlines()
    return lines[0].strip() if lines else ""


def exact(reply: str, answer: str) -> bool:
    """The reply's first line, stripped, is the answer."""
    return _first_line(reply) == answer.strip()


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _first_number(reply: str) -> float | None:
    found = NUMBER.search(reply)
    return float(found.group()) if found else None


def numeric(reply: str, answer: str) -> bool:
    """The first number in the reply equals the answer's (to 1e-9, relative)."""
    value = _first_number(reply)
    return value is not None and math.isclose(value, float(answer), rel_tol=1e-9, abs_tol=1e-12)


CHECKERS: dict[str, Callable[[str, str], bool]] = {"exact": exact, "numeric": numeric}


def resolve_checker(name: str) -> Callable[[str, str], bool]:
    """'exact', 'numeric', or 'package.module:function' taking (reply, answer) and returning True when right."""
    if name in CHECKERS:
        return CHECKERS[name]
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"checker {name!r}: use 'exact', 'numeric' or 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"checker {name!r}: cannot import it ({e}); is the module on PYTHONPATH?") from None
    if not callable(fn):
        raise ConfigError(f"checker {name!r} is not a function: give one taking (reply, answer)")
    return fn


def is_correct(problem: Problem, reply: str) -> bool:
    return bool(resolve_checker(problem.checker)(reply, problem.answer))


def answer_key(problem: Problem, reply: str) -> str | float | None:
    """What two replies share when they give the same answer, as the problem's checker reads them: the first
    number's value for 'numeric' (None without one), else the first line, stripped (a user's checker included)."""
    return _first_number(reply) if problem.checker == "numeric" else _first_line(reply)


def _word(rng: random.Random, low: int = 4, high: int = 7) -> str:
    return "".join(rng.choice(string.ascii_lowercase[:12]) for _ in range(rng.randint(low, high)))


def _add(rng):
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    return f"{a} + {b} =", str(a + b), "numeric"


def _multiply(rng):
    a, b = rng.randint(10, 99), rng.randint(2, 9)
    return f"{a} * {b} =", str(a * b), "numeric"


def _spaced(letters) -> str:
    """Letters one a token: a 512-piece BPE fuses pairs ('ck', 'de'), hiding the letters a task is about."""
    return " ".join(letters)


def _reverse(rng):
    w = _word(rng)
    return f"reverse {_spaced(w)}", _spaced(w[::-1]), "exact"


def _sort(rng):
    w = _word(rng)
    return f"sort {_spaced(w)}", _spaced(sorted(w)), "exact"


def _count(rng):
    w = _word(rng, 5, 9)
    letter = rng.choice(w)
    return f"count {letter} in {_spaced(w)}", str(w.count(letter)), "numeric"


# The expression task's functions: all an expression may call (builtins are otherwise empty).
EXPRESSION_BUILTINS = {"len": len, "sorted": sorted, "max": max, "min": min, "sum": sum}


def evaluate_expression(expr: str):
    """The value of an expression the generator wrote (never a model's output): literals and EXPRESSION_BUILTINS."""
    return eval(compile(expr, "<task>", "eval"), {"__builtins__": EXPRESSION_BUILTINS})  # noqa: S307


def _python(rng):
    small = [rng.randint(0, 9) for _ in range(rng.randint(2, 4))]
    w, a, b = _word(rng, 3, 5), rng.randint(10, 99), rng.randint(2, 9)
    expr = rng.choice(
        [
            f"len({w!r}) + {b}",
            f"sorted({small})",
            f"{w!r}[::-1]",
            f"{a} // {b}",
            f"{a} % {b}",
            f"max({small}) - min({small})",
            f"sum({small})",
            f"{small}[{rng.randrange(len(small))}]",
            f"{w!r} * 2",
            f"{w!r}.upper()",
        ]
    )
    return f"python: {expr}", repr(evaluate_expression(expr)), "exact"


EMBEDDED: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "add": _add,
    "multiply": _multiply,
    "python": _python,
    "reverse": _reverse,
    "sort": _sort,
    "count": _count,
}


def embedded(task: str, n: int = PROBLEMS_PER_TASK) -> list[Problem]:
    """Up to n distinct problems of an embedded task, the same ones every time."""
    return list(_drawn(task, n))


@functools.cache  # every stage and evaluation draws the same problems: once a process
def _drawn(task: str, n: int) -> tuple[Problem, ...]:
    rng, seen, problems = random.Random(f"jaxllm-task-{task}"), set(), []
    for _ in range(20 * n):  # small problem spaces run out of new prompts: stop rather than loop
        prompt, answer, checker = EMBEDDED[task](rng)
        if prompt not in seen:
            seen.add(prompt)
            problems.append(Problem(task, prompt, answer, checker))
            if len(problems) == n:
                break
    return tuple(problems)


def read_task_file(path: str) -> list[Problem]:
    """The user's problems: {"prompt", "answer", optional "checker"} a line."""
    problems = []
    try:
        lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"task source 'tasks:{path}': cannot read it ({e.strerror}); give a JSONL file") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not (isinstance(record.get("prompt"), str) and isinstance(record.get("answer"), str)):
                raise ValueError('expected {"prompt": "...", "answer": "..."}')
        except (ValueError, AttributeError) as e:
            raise ConfigError(f"{path}:{n}: not a task record: {e}") from None
        checker = record.get("checker", "exact")
        resolve_checker(checker)  # refused now, not when first scored
        problems.append(Problem(path, record["prompt"], record["answer"], checker))
    return problems


def is_task_source(source: str) -> bool:
    return source == "tasks" or source.startswith("tasks:")


def load(source: str, val_fraction: float) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems of a 'tasks' or 'tasks:...' source, split by a hash of each prompt."""
    spec = source.partition(":")[2]
    if spec.endswith(".jsonl"):
        problems = read_task_file(spec)
    else:
        names = spec.split("+") if spec else list(EMBEDDED)
        unknown = [n for n in names if n not in EMBEDDED]
        if unknown:
            raise ConfigError(
                f"source {source!r}: no task {', '.join(unknown)}; embedded: {', '.join(EMBEDDED)} "
                "(or tasks:PATH.jsonl)"
            )
        problems = [p for name in names for p in embedded(name)]
    train, heldout = [], []
    for p in problems:
        (heldout if is_validation(p.prompt, val_fraction) else train).append(p)
    return train, heldout


def _variants(answer: str, rng: random.Random) -> list[str]:
    """Near misses of an answer: off by one or ten, digits or letters swapped, one dropped or doubled."""
    out = []
    if re.fullmatch(r"-?\d+", answer):
        out += [str(int(answer) + d) for d in (1, -1, 10, -10, 2)]
    if len(answer) > 1:
        i = rng.randrange(len(answer) - 1)
        out.append(answer[:i] + answer[i + 1] + answer[i] + answer[i + 2 :])
        out.append(answer[:i] + answer[i + 1 :])
        out.append(answer[:i] + answer[i] + answer[i:])
        out.append(answer[::-1])
    return out + [answer + answer[-1:], "0"]


def wrong_answers(problem: Problem, k: int, others: list[Problem]) -> list[str]:
    """k distinct answers the problem's checker rejects: near misses first, then other problems' answers."""
    rng = random.Random(f"jaxllm-wrong-{problem.task}-{problem.prompt}")
    pool = _variants(problem.answer, rng) + [o.answer for o in rng.sample(others, min(len(others), 4 * k))]
    out: list[str] = []
    for candidate in pool:
        if candidate.strip() and candidate not in out and not is_correct(problem, candidate):
            out.append(candidate)
            if len(out) == k:
                break
    return out


def records(problems: list[Problem], kind: str) -> list[dict]:
    """The problems as chat_data records of `kind`: 'conversations' (prompt and answer), 'preferences' (the answer
    chosen over a wrong one) or 'choices' (the answer among three wrong ones)."""
    if kind == "conversations":
        return [
            {"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.answer}]}
            for p in problems
        ]
    out = []
    for p in problems:
        wrong = wrong_answers(p, 1 if kind == "preferences" else 3, problems)
        if kind == "preferences" and wrong:
            out.append({"prompt": p.prompt, "chosen": p.answer, "rejected": wrong[0]})
        elif kind == "choices" and len(wrong) == 3:
            choices = [p.answer, *wrong]
            random.Random(f"jaxllm-choices-{p.prompt}").shuffle(choices)
            out.append({"question": p.prompt, "choices": choices, "answer": choices.index(p.answer)})
    return out
