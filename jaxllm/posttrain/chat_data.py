"""Chat and preference data: JSONL readers, and the embedded defaults built from the Python standard library.

Shapes (one JSON object a line, as most open chat datasets use):
  conversations      {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
  preference pairs   {"prompt": "..." or [messages], "chosen": "...", "rejected": "..."}
  multiple choice    {"question": "...", "choices": ["...", ...], "answer": index of the right choice}

A source is 'stdlib' (the embedded docstring tasks), 'tasks' or 'tasks:...' (verifiable tasks with exact answers,
jaxllm.posttrain.tasks), or a JSONL path or glob. Every source is split into train and held-out:
the stdlib by module (`is_validation` on the module file's document id, the hash pretraining splits by, so with
posttrain.val_fraction >= data.val_fraction every module pretraining held out is held out here too), JSONL files
by a hash of each line.

The embedded tasks ask about public functions and methods whose docstring opens with a short sentence, and
answer with that sentence (short answers a 5M-parameter model can learn to produce in minutes):
  "What does `textwrap.dedent` do?"                             -> "Remove any common leading whitespace ..."
  "Write a one-line summary of this function:\n<its source>"    -> the same sentence
Preference pairs put the right sentence against a plausible wrong one: another function's from the same module,
or the right one's first half spliced onto another's second half. Multiple choice asks for the right sentence
among four from the same module, for held-out functions only.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import glob
import hashlib
import json
import os
import pathlib
import random
import re
import textwrap

from jaxllm.config import ConfigError
from jaxllm.data.prepare import is_validation
from jaxllm.data.sources import stdlib_root
from jaxllm.posttrain import tasks
from jaxllm.posttrain.chat_template import check_messages

SUMMARY_PROMPT = "Write a one-line summary of this function:\n"
MAX_SOURCE_CHARS = 300  # the source task keeps short functions only: a whole conversation fits 128 tokens
SKIPPED_PACKAGES = ("test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip")


@dataclasses.dataclass(frozen=True)
class FunctionDoc:
    module: str  # 'textwrap'
    name: str  # 'dedent', or 'TextWrapper.wrap' for a method
    summary: str  # the docstring's first sentence
    source: str  # the definition without its docstring, dedented; '' when longer than MAX_SOURCE_CHARS
    heldout: bool


def first_sentence(docstring: str) -> str:
    """The first sentence of the first paragraph, whitespace collapsed ('i.e. x' does not end a sentence:
    a sentence ends at . ! or ? followed by a capital letter or the paragraph's end)."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(?=\s+[A-Z]|$)", paragraph)
    return match.group(1) if match else paragraph


def _module_name(rel: str) -> str | None:
    parts = rel[:-3].split("/")
    if any(p in SKIPPED_PACKAGES or p.startswith("test_") or (p.startswith("_") and p != "__init__") for p in parts):
        return None
    return ".".join(p for p in parts if p != "__init__")


def _python_files(root: pathlib.Path) -> list[pathlib.Path]:
    """The stdlib's .py files, sorted, without entering skipped packages (the tests alone are half the stdlib)."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d
            for d in dirnames
            if d not in SKIPPED_PACKAGES
            and not d.startswith((".", "_"))
            and d not in ("site-packages", "dist-packages")
        ]
        paths += [pathlib.Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(paths)


def _source_without_docstring(source_lines: list[str], fn: ast.FunctionDef) -> str:
    doc = fn.body[0]
    lines = source_lines[fn.lineno - 1 : doc.lineno - 1] + source_lines[doc.end_lineno : fn.end_lineno]
    return textwrap.dedent("\n".join(lines)).strip()


@functools.lru_cache(maxsize=4)
def stdlib_functions(val_fraction: float) -> tuple[FunctionDoc, ...]:
    """Public module-level functions and methods of public classes with a 15-100 character first sentence, in
    sorted file order then source order (deterministic for a given interpreter)."""
    root = stdlib_root()
    out = []
    for path in _python_files(root):
        rel = path.relative_to(root).as_posix()
        module = _module_name(rel)
        if module is None:
            continue
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = text.splitlines()
        heldout = is_validation(f"stdlib/{rel}", val_fraction)  # the id jaxllm.data.sources gives this file
        candidates = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                candidates.append((node.name, node))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                candidates += [(f"{node.name}.{f.name}", f) for f in node.body if isinstance(f, ast.FunctionDef)]
        seen = set()
        for name, fn in candidates:
            docstring = ast.get_docstring(fn)
            if name.split(".")[-1].startswith("_") or not docstring or name in seen:
                continue
            seen.add(name)  # a redefinition (e.g. per platform) would give two answers to one question
            summary = first_sentence(docstring)
            if not 15 <= len(summary) <= 100:
                continue
            source = _source_without_docstring(lines, fn) if len(fn.body) > 1 else ""
            out.append(FunctionDoc(module, name, summary, source if len(source) <= MAX_SOURCE_CHARS else "", heldout))
    return tuple(out)


def _ask_name(fn: FunctionDoc) -> str:
    return f"What does `{fn.module}.{fn.name}` do?"


def _prompts(fn: FunctionDoc) -> list[str]:
    return [_ask_name(fn)] + ([SUMMARY_PROMPT + fn.source] if fn.source else [])


def _by_module(functions) -> dict[str, list[FunctionDoc]]:
    groups: dict[str, list[FunctionDoc]] = {}
    for fn in functions:
        groups.setdefault(fn.module, []).append(fn)
    return groups


def _rng(*key: str) -> random.Random:
    """A generator seeded by a stable hash (Python's hash() changes between processes)."""
    return random.Random(int(hashlib.sha256("/".join(key).encode()).hexdigest()[:16], 16))


def stdlib_conversations(functions) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": fn.summary}]}
        for fn in functions
        for p in _prompts(fn)
    ]


def _splice(right: str, other: str) -> str:
    """The right sentence's first half, then the other's second half: fluent, on topic, and wrong."""
    a, b = right.split(), other.split()
    return " ".join(a[: len(a) // 2] + b[len(b) // 2 :])


def stdlib_preferences(functions) -> list[dict]:
    """One pair per prompt; modules with a single function give no pairs (no wrong answer from the module)."""
    pairs = []
    for group in _by_module(functions).values():
        for i, fn in enumerate(group):
            others = [g.summary for g in group if g.summary != fn.summary]
            if not others:
                continue
            rng = _rng(fn.module, fn.name)
            for k, prompt in enumerate(_prompts(fn)):
                other = rng.choice(others)
                rejected = other if (i + k) % 2 == 0 else _splice(fn.summary, other)
                if rejected != fn.summary:
                    pairs.append({"prompt": prompt, "chosen": fn.summary, "rejected": rejected})
    return pairs


def stdlib_multiple_choice(functions) -> list[dict]:
    """For each function with three other distinct summaries in its module: pick its summary among four.
    The question shows the source when the function is short, else names it."""
    items = []
    for group in _by_module(functions).values():
        for fn in group:
            others = sorted({g.summary for g in group} - {fn.summary})
            if len(others) < 3:
                continue
            rng = _rng("choice", fn.module, fn.name)
            choices = rng.sample(others, 3)
            answer = rng.randrange(4)
            choices.insert(answer, fn.summary)
            items.append({"question": _prompts(fn)[-1], "choices": choices, "answer": answer})
    return items


# ---------------------------------------------------------------------------------------------------------------
# JSONL


def check_conversation(record) -> None:
    if not isinstance(record, dict) or "messages" not in record:
        raise ValueError('expected {"messages": [...]}')
    check_messages(record["messages"])
    if not any(m["role"] == "assistant" for m in record["messages"]):
        raise ValueError("the conversation has no assistant message: nothing to learn from")


def check_preference(record) -> None:
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("chosen", "rejected")):
        raise ValueError('expected {"prompt": ..., "chosen": "...", "rejected": "..."}')
    if not isinstance(record.get("prompt"), str):
        check_messages(record.get("prompt"))


def check_choice(record) -> None:
    choices = record.get("choices") if isinstance(record, dict) else None
    if not (
        isinstance(record, dict)
        and isinstance(record.get("question"), str)
        and isinstance(choices, list)
        and len(choices) >= 2
        and all(isinstance(c, str) for c in choices)
        and isinstance(record.get("answer"), int)
        and 0 <= record["answer"] < len(choices)
    ):
        raise ValueError('expected {"question": "...", "choices": ["...", ...], "answer": index into choices}')


CHECKS = {"conversations": check_conversation, "preferences": check_preference, "choices": check_choice}
STDLIB_BUILDERS = {
    "conversations": stdlib_conversations,
    "preferences": stdlib_preferences,
    "choices": stdlib_multiple_choice,
}


def read_jsonl(pattern: str, kind: str) -> list[tuple[str, dict]]:
    """(line, record) for every line of the files matching pattern, checked against `kind`'s shape."""
    paths = sorted(glob.glob(str(pathlib.Path(pattern).expanduser())))
    if not paths:
        raise ConfigError(f"{kind} source {pattern!r} matches no file: give a JSONL path or glob, 'stdlib' or 'tasks'")
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    CHECKS[kind](record)
                except ValueError as e:  # json.JSONDecodeError is a ValueError
                    raise ConfigError(f"{path}:{n}: not a valid {kind} record: {e}") from None
                out.append((line.strip(), record))
    return out


def load(sources: tuple[str, ...], kind: str, val_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held-out) records of `kind` ('conversations', 'preferences' or 'choices') from the sources."""
    train, heldout = [], []
    for source in sources:
        if source == "stdlib":
            functions = stdlib_functions(val_fraction)
            train += STDLIB_BUILDERS[kind]([f for f in functions if not f.heldout])
            heldout += STDLIB_BUILDERS[kind]([f for f in functions if f.heldout])
        elif tasks.is_task_source(source):
            train_problems, heldout_problems = tasks.load(source, val_fraction)
            train += tasks.records(train_problems, kind)
            heldout += tasks.records(heldout_problems, kind)
        else:
            for line, record in read_jsonl(source, kind):
                (heldout if is_validation(line, val_fraction) else train).append(record)
    return train, heldout


def check_split(train: list, heldout: list, what: str) -> None:
    """Training needs both splits: batches from one, held-out evaluation on the other."""
    if not train or not heldout:
        raise ConfigError(
            f"{what} gives {len(train)} train and {len(heldout)} held-out records: both must be "
            "non-empty; add data or change posttrain.val_fraction"
        )


def prompt_messages(pair: dict) -> list[dict]:
    """A preference pair's prompt as messages (a plain string is one user turn)."""
    prompt = pair["prompt"]
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
