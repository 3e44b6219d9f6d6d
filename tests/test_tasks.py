"""Verifiable tasks: exact answers (checked here by an independent computation), disjoint and stable splits,
checkers (built in and plugged in), wrong answers the checkers reject, and the chat_data sources they feed."""

import itertools
import json
import re

import numpy as np
import pytest

from jaxllm.config import ConfigError
from jaxllm.data.prepare import is_validation
from jaxllm.eval import verifiable
from jaxllm.posttrain import chat_data, tasks


def reply_is_yes(reply: str, answer: str) -> bool:  # a user's checker, plugged in by 'tests.test_tasks:reply_is_yes'
    return reply.strip().lower() == "yes"


INDEPENDENT = {  # each task's answer computed from its prompt, without the generator's code
    "add": lambda p: str(sum(map(int, re.fullmatch(r"(\d+) \+ (\d+) =", p).groups()))),
    "multiply": lambda p: str(eval(p.rstrip(" ="), {"__builtins__": {}})),  # noqa: S307
    "reverse": lambda p: " ".join(reversed(p.split()[1:])),
    "sort": lambda p: " ".join(sorted(p.split()[1:])),
    "count": lambda p: str(p.split()[3:].count(p.split()[1])),
    "python": lambda p: repr(eval(p.removeprefix("python: "))),  # noqa: S307  full builtins: the generator's are few
}


@pytest.mark.parametrize("task", sorted(tasks.EMBEDDED))
def test_every_answer_is_exact_and_the_splits_are_disjoint_and_stable(task):
    train, heldout = tasks.load(f"tasks:{task}", 0.15)
    for p in train + heldout:
        assert p.answer == INDEPENDENT[task](p.prompt), p
        assert tasks.is_correct(p, p.answer) and tasks.is_correct(p, p.answer + "\nand more")
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    assert len(train) + len(heldout) == len({p.prompt for p in train + heldout})  # no prompt twice
    assert all(is_validation(p.prompt, 0.15) for p in heldout)  # held out by its prompt, however many are drawn
    assert 0.08 < len(heldout) / (len(train) + len(heldout)) < 0.22
    assert tasks.embedded(task, 50) == tasks.embedded(task)[:50]


def test_checkers():
    assert tasks.exact("  deck \nmore text", "deck") and not tasks.exact("decks", "deck") and not tasks.exact("", "a")
    assert tasks.numeric("the sum is 1030.", "1030") and tasks.numeric("-2.50", "-2.5")
    assert not tasks.numeric("1031", "1030") and not tasks.numeric("no number", "3")
    assert tasks.resolve_checker("tests.test_tasks:reply_is_yes")("Yes ", "") is True
    for bad, message in [
        ("fuzzy", "use 'exact', 'numeric'"),
        ("tests.no_such_module:f", "cannot import"),
        ("tests.test_tasks:nothing", "cannot import"),
        ("tests.test_tasks:INDEPENDENT", "not a function"),
    ]:
        with pytest.raises(ConfigError, match=message):
            tasks.resolve_checker(bad)


def test_the_expression_task_has_no_builtins_beyond_its_own():
    assert tasks.evaluate_expression("sorted([3, 1, 2])") == [1, 2, 3]
    with pytest.raises(NameError):
        tasks.evaluate_expression("open('x')")


def test_wrong_answers_fail_their_checker_and_right_ones_pass():
    train, _ = tasks.load("tasks", 0.15)
    sample = train[::97]
    for pair in tasks.records(sample, "preferences"):
        problem = next(p for p in sample if p.prompt == pair["prompt"])
        assert tasks.is_correct(problem, pair["chosen"]) and not tasks.is_correct(problem, pair["rejected"])
    choices = tasks.records(sample, "choices")
    assert len(choices) >= 0.9 * len(sample)
    for item in choices:
        problem = next(p for p in sample if p.prompt == item["question"])
        right = [i for i, c in enumerate(item["choices"]) if tasks.is_correct(problem, c)]
        assert right == [item["answer"]] and len(set(item["choices"])) == 4


def test_user_tasks_from_jsonl_through_chat_data(tmp_path):
    path = tmp_path / "mine.jsonl"
    lines = [{"prompt": f"twice {i}", "answer": str(2 * i), "checker": "numeric"} for i in range(200)]
    path.write_text("\n".join(map(json.dumps, lines)) + "\n")
    train, heldout = chat_data.load((f"tasks:{path}",), "conversations", 0.2)
    assert len(train) + len(heldout) == 200 and heldout
    assert train[0]["messages"][1]["content"] == str(2 * int(train[0]["messages"][0]["content"].split()[1]))
    pairs, _ = chat_data.load((f"tasks:{path}",), "preferences", 0.2)
    assert all(not tasks.numeric(p["rejected"], p["chosen"]) for p in pairs)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a"}\n', r"mine.jsonl:1: not a task record"),
        ('{"prompt": "a", "answer": "b", "checker": "nope"}\n', "checker 'nope'"),
        ("not json\n", r"mine.jsonl:1: not a task record"),
    ],
)
def test_bad_task_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        tasks.load(f"tasks:{path}", 0.2)


def test_unknown_task_and_missing_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no task division; embedded: add"):
        tasks.load("tasks:add+division", 0.2)
    with pytest.raises(ConfigError, match="cannot read it"):
        tasks.load(f"tasks:{tmp_path / 'none.jsonl'}", 0.2)


def test_wilson_interval_matches_the_formula_at_its_edges():
    # p = 0.5, n = 10: center 0.5, half-width 1.96 sqrt(0.025 + 1.96^2/400) / (1 + 1.96^2/10) = 0.2634
    np.testing.assert_allclose(verifiable.wilson(5, 10), (0.23659, 0.76341), atol=1e-5)
    np.testing.assert_allclose(verifiable.wilson(0, 10), (0.0, 0.27753), atol=1e-5)  # honest at zero successes
    np.testing.assert_allclose(verifiable.wilson(10, 10), (0.72247, 1.0), atol=1e-5)


def test_pass_at_1_scores_replies_with_each_tasks_checker():
    problems = verifiable.heldout_problems(0.15, per_task=8)
    answers = {p.prompt: p.answer for group in problems.values() for p in group}
    # right on even positions only, wrapped in text the numeric checker reads through and the exact one does not
    reply = lambda prompts: [f"{answers[q]}\n" if i % 2 == 0 else f"it is {answers[q]}" for i, q in enumerate(prompts)]  # noqa: E731
    result = verifiable.pass_at_1(problems, reply)
    for name in ("add", "multiply", "count"):  # numeric: 'it is 42' is right too
        assert result[name]["pass@1"] == 1.0
    for name in ("reverse", "sort", "python"):
        assert result[name]["pass@1"] == 0.5 and result[name]["n"] == 8
    assert result["all"]["pass@1"] == (3 * 8 + 3 * 4) / 48
    assert result["all"]["interval_95"] == list(verifiable.wilson(36, 48))


def test_mcnemar_counts_only_the_problems_one_stage_alone_solved():
    # 5 gained, none lost: two-sided 2 x (1/2)^5; problems both or neither solved change nothing
    assert verifiable.mcnemar_p([False] * 5 + [True, False], [True] * 5 + [True, False]) == 2 / 32
    assert verifiable.mcnemar_p([False] * 6, [True] * 6) == 2 / 64
    assert verifiable.mcnemar_p([True, True, True, False, False, False], [False, False, False, True, True, True]) == 1.0
    assert verifiable.mcnemar_p([True, False], [True, False]) == 1.0
    # 7 gained, 1 lost: 2 x (C(8,0) + C(8,1)) / 2^8
    assert verifiable.mcnemar_p([False] * 7 + [True], [True] * 7 + [False]) == 2 * 9 / 256


def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_reply():
    for n, c, k in ((8, 0, 4), (8, 1, 4), (8, 3, 4), (8, 5, 4), (8, 8, 1), (6, 2, 3)):
        subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
        assert verifiable.pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets), abs=1e-12)


def test_sampled_pass_counts_each_problems_right_samples_and_their_majority():
    problems = {"add": verifiable.heldout_problems(0.15, per_task=4)["add"]}
    answers = {p.prompt: p.answer for p in problems["add"]}
    calls = []

    def sample(prompts):  # problem i is right in its first i replies; its wrong ones agree when i is even
        calls.append(len(prompts))
        seen: dict[str, int] = {}
        out = []
        for q in prompts:
            i = [p.prompt for p in problems["add"]].index(q)
            seen[q] = seen.get(q, 0) + 1
            out.append(answers[q] if seen[q] <= i else "-1" if i % 2 == 0 else f"-{seen[q]}")
        return out

    result = verifiable.sampled_pass(problems, sample, k=2)
    expected = [verifiable.pass_at_k(verifiable.SAMPLES, c, 2) for c in range(4)]
    assert calls == [4 * verifiable.SAMPLES]
    assert result["add"]["pass@k"] == pytest.approx(np.mean(expected)) and result["add"]["k"] == 2
    low, high = result["all"]["interval_95"]
    assert min(expected) <= low <= np.mean(expected) <= high <= max(expected)
    # i = 0 and 2: '-1' outvotes; i = 1: one vote each, the right answer came first; i = 3: 3 against 1 each
    assert result["add"]["majority"] == result["all"]["majority"] == 0.5
    assert result["all"]["majority_interval_95"] == pytest.approx(verifiable.wilson(2, 4))


def test_majority_reply_groups_answers_as_the_checker_reads_them():
    numeric = tasks.Problem("add", "2 + 10 =", "12", "numeric")
    assert verifiable.majority_reply(numeric, ["13", "= 12", "12.0 apples", "13.0", "twelve", "12"]) == "= 12"
    assert verifiable.majority_reply(numeric, ["none", "13", "nothing"]) == "none"  # two replies without a number agree
    exact = tasks.Problem("reverse", "reverse a b", "b a")
    assert verifiable.majority_reply(exact, ["a b", " b a\nmore", "b a ", "a b\n"]) == "a b"  # a tie: first seen
    assert verifiable.majority_reply(exact, ["a b", " b a\nmore", "b a "]) == " b a\nmore"
