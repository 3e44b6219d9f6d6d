"""The evaluation suite across stages (the command is `python -m jaxllm.evaluate`, jaxllm/evaluate.py).

Each run is evaluated with the runs it started from (train.init_from, followed back to pretraining; --lineage=false
evaluates only the runs named), one column per run:
  - held-out text: loss and bits-per-byte on a contiguous stretch of the pretraining validation split, beside
    gzip -9, bz2 -9 and xz -9e compressing exactly the same text (the bytes the scored tokens stand for);
  - multiple choice: each choice scored by the log-likelihood of its tokens after the chat-template prompt, total
    and per byte of the choice (length-normalised); JSONL {"question", "choices", "answer"} from --choices, or
    the held-out verifiable task problems (the answer among three wrong ones, jaxllm.posttrain.tasks.records);
  - verifiable tasks: greedy pass@1, sampled pass@k and the majority vote of the samples per embedded task on
    held-out problems, with 95% intervals (jaxllm.eval.verifiable);
  - DPO runs: held-out reward accuracy (and loss, margin) against their reference, the run they started from;
  - greedy replies to a fixed prompt set (a held-out problem of each of the first tasks).
Prints one table and writes it all as JSON (--out, default <last run_dir>/evaluation.json).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import pathlib

import numpy as np
from etils import epath

from jaxllm import storage
from jaxllm.config import ConfigError, config_from_dict
from jaxllm.data.prepare import prepare
from jaxllm.eval import verifiable
from jaxllm.model.scoring import sequence_logprobs, summed_logprobs
from jaxllm.plots import plt, save_figure
from jaxllm.posttrain import chat_data, tasks
from jaxllm.posttrain.chat_template import reply_prompt
from jaxllm.posttrain.common import user_replies
from jaxllm.posttrain.dpo import pair_rows, preference_metrics
from jaxllm.train import checkpoint
from jaxllm.train.checkpoint import load_run
from jaxllm.train.evaluation import bits_per_byte


def lineage(run_dir: str | os.PathLike) -> list[epath.Path]:
    """run_dir and the runs it started from, oldest first (a Hugging Face start ends the chain); local or gs://."""
    chain = [storage.path(run_dir)]
    while True:
        mngr = checkpoint.manager(chain[0], read_only=True)
        meta = checkpoint.read_meta(mngr) if (chain[0] / "checkpoints").is_dir() else None
        mngr.close()
        start = config_from_dict(meta["config"]).train.init_from if meta else ""
        if not start or start.startswith("hf:") or storage.path(start) in chain:
            return chain
        chain.insert(0, storage.path(start))


def compressor_bpb(text: str) -> dict[str, float]:
    raw = text.encode("utf-8")
    sizes = {
        "gzip -9": len(gzip.compress(raw, 9)),
        "bz2 -9": len(bz2.compress(raw, 9)),
        "xz -9e": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
    }
    return {name: 8 * size / len(raw) for name, size in sizes.items()}


def heldout_windows(val_tokens: np.ndarray, block_size: int, n_windows: int) -> dict[str, np.ndarray]:
    """n_windows consecutive, non-overlapping windows from the start of the split (fewer if it is short):
    rows {'inputs', 'targets', 'loss_mask'} whose targets together are one contiguous stretch of text."""
    n = min(n_windows, (len(val_tokens) - 1) // block_size)
    tokens = np.asarray(val_tokens[: n * block_size + 1], np.int32)
    inputs, targets = tokens[:-1].reshape(n, block_size), tokens[1:].reshape(n, block_size)
    return {"inputs": inputs, "targets": targets, "loss_mask": np.ones(targets.shape, np.float32)}


def text_metrics(run, rows: dict[str, np.ndarray]) -> dict:
    nats = -float(np.sum(sequence_logprobs(run.graphdef, run.params, rows)))
    n_bytes = float(np.sum(run.tokenizer.token_bytes()[rows["targets"]]))
    return {"val_loss": nats / rows["targets"].size, "val_bpb": bits_per_byte(nats, n_bytes)}


def choice_logprobs(run, items: list[dict], bucket: int = 32, batch: int = 32) -> list[np.ndarray]:
    """For each item, (n_choices,) summed log-probabilities of each choice's tokens after the rendered question.
    Rows are sorted by length and padded to a multiple of `bucket` (fewer padded tokens, few compilations)."""
    limit = run.cfg.model.block_size + 1
    sequences = []  # (item, choice, ids, number of choice tokens)
    for i, item in enumerate(items):
        prompt = reply_prompt([{"role": "user", "content": item["question"]}], run.tokenizer)
        for j, choice in enumerate(item["choices"]):
            answer = run.tokenizer.encode(choice)
            sequences.append((i, j, (prompt + answer)[-limit:], len(answer)))  # a long question loses its start
    sequences.sort(key=lambda s: len(s[2]))
    scores = [np.zeros(len(item["choices"])) for item in items]
    for start in range(0, len(sequences), batch):
        part = sequences[start : start + batch]
        width = -(-max(len(s[2]) - 1 for s in part) // bucket) * bucket
        ids = np.zeros((batch, width + 1), np.int32)
        mask = np.zeros((batch, width), np.float32)
        for r, (_, _, seq, n_answer) in enumerate(part):
            ids[r, : len(seq)] = seq
            mask[r, len(seq) - 1 - n_answer : len(seq) - 1] = 1  # targets t predict ids[t + 1]
        out = np.asarray(summed_logprobs(run.params, run.graphdef, ids[:, :-1], ids[:, 1:], mask))
        for r, (i, j, _, _) in enumerate(part):
            scores[i][j] = out[r]
    return scores


def multiple_choice(run, items: list[dict]) -> dict:
    scores = choice_logprobs(run, items)
    answers = np.array([item["answer"] for item in items])
    total = np.array([int(np.argmax(s)) for s in scores])
    per_byte = np.array(
        [
            int(np.argmax(s / np.array([max(len(c.encode("utf-8")), 1) for c in item["choices"]])))
            for s, item in zip(scores, items)
        ]
    )
    return {
        "mc_acc": float(np.mean(total == answers)),
        "mc_acc_interval_95": list(verifiable.wilson(int(np.sum(total == answers)), len(items))),
        "mc_acc_norm": float(np.mean(per_byte == answers)),
        "mc_chance": float(np.mean([1 / len(item["choices"]) for item in items])),
        "mc_items": len(items),
    }


def replies(run, questions: list[str], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
    """Each question's reply as one user turn: greedy, or sampled (every row its own draw, seed 0)."""
    return user_replies(run.graphdef, run.params, run.cfg.model, run.tokenizer, questions, max_new_tokens, temperature)


def _unencodable(tokenizer, items: list[dict], questions: list[str]) -> str:
    """Why the tokenizer cannot encode the multiple-choice items or questions ('' when it can)."""
    try:
        for text in [*questions, *(t for item in items for t in (item["question"], *item["choices"]))]:
            tokenizer.encode(text)
    except ValueError as e:
        return str(e)
    return ""


def evaluate_runs(
    run_dirs: list[pathlib.Path],
    choices_path: str = "",
    text_windows: int = 64,
    per_task: int = verifiable.PER_TASK,
    n_samples: int = 6,
    sample_tokens: int = 40,
    progress: bool = True,
) -> dict:
    """Every figure of the module docstring, for each run: {'runs': {name: {...}}, 'compressors': {...}, ...}."""

    say = print if progress else (lambda *a, **k: None)
    runs = {str(d): load_run(d) for d in run_dirs}
    first = next(iter(runs.values()))
    val_fraction = list(runs.values())[-1].cfg.posttrain.val_fraction
    if choices_path:
        items = [record for _, record in chat_data.read_jsonl(choices_path, "choices")]
        if not items:
            raise ConfigError(
                f"--choices={choices_path} holds no items: give a JSONL file of "
                '{"question", "choices", "answer"} lines'
            )
    problems = verifiable.heldout_problems(val_fraction, per_task)
    if not choices_path:
        items = tasks.records([p for group in problems.values() for p in group], "choices")
    questions = [group[0].prompt for group in problems.values()][:n_samples]  # one task's problem each
    windows = heldout_windows(prepare(first.cfg, progress=False).val_tokens, first.cfg.model.block_size, text_windows)
    text = first.tokenizer.decode(windows["targets"].reshape(-1))
    out = {
        "heldout_text_bytes": len(text.encode("utf-8")),
        "compressors": compressor_bpb(text),
        "mc_source": choices_path or "the held-out verifiable task problems",
        "sample_questions": questions,
        "runs": {},
    }
    for name, run in runs.items():
        say(f"[evaluate] {name} (step {run.step})")
        result = {"stage": run.cfg.posttrain.stage or "base", "step": run.step, **text_metrics(run, windows)}
        unencodable = _unencodable(run.tokenizer, items, questions)
        if unencodable:  # a character tokenizer trained on one text (Shakespeare) has no '`' or '_'
            say(f"[evaluate] {name}: multiple choice and replies skipped: {unencodable}")
            result["chat_tasks_skipped"] = unencodable
        else:
            result.update(multiple_choice(run, items), samples=replies(run, questions, sample_tokens))
            reply = lambda prompts, run=run: replies(run, prompts, tasks.REPLY_TOKENS)
            result["tasks"] = verifiable.pass_at_1(problems, reply)
            sample = lambda prompts, run=run: replies(run, prompts, tasks.REPLY_TOKENS, temperature=1.0)
            result["tasks_sampled"] = verifiable.sampled_pass(problems, sample)
        if run.cfg.posttrain.stage == "dpo":
            reference = runs.get(run.cfg.train.init_from) or load_run(run.cfg.train.init_from)
            pairs = chat_data.load(run.cfg.posttrain.preferences, "preferences", run.cfg.posttrain.val_fraction)[1]
            rows, _ = pair_rows(pairs, run.tokenizer, run.cfg.posttrain.seq_len)
            result["dpo_heldout"] = preference_metrics(
                run.graphdef, run.params, reference.params, rows, run.cfg.posttrain.beta
            )
        out["runs"][name] = result
    return out


def format_table(results: dict) -> str:
    names = list(results["runs"])
    width = max(12, *(len(pathlib.Path(n).name) + 2 for n in names))
    rows = [("", [pathlib.Path(n).name for n in names]), ("stage", [r["stage"] for r in results["runs"].values()])]

    def figure(key, fmt="{:.4f}"):
        return [fmt.format(r[key]) if key in r else "-" for r in results["runs"].values()]

    rows += [
        ("held-out loss (nats/token)", figure("val_loss")),
        ("held-out bits/byte", figure("val_bpb")),
        ("multiple choice acc (total)", figure("mc_acc", "{:.3f}")),
        (
            "  95% interval",
            [
                "[{:.2f}, {:.2f}]".format(*r["mc_acc_interval_95"]) if "mc_acc_interval_95" in r else "-"
                for r in results["runs"].values()
            ],
        ),
        ("multiple choice acc (per byte)", figure("mc_acc_norm", "{:.3f}")),
        ("multiple choice chance", figure("mc_chance", "{:.3f}")),
        (
            "DPO held-out reward acc",
            [f"{r['dpo_heldout']['reward_acc']:.3f}" if "dpo_heldout" in r else "-" for r in results["runs"].values()],
        ),
        (
            "DPO held-out margin",
            [f"{r['dpo_heldout']['margin']:.3f}" if "dpo_heldout" in r else "-" for r in results["runs"].values()],
        ),
    ]
    task_names = next((list(r["tasks"]) for r in results["runs"].values() if "tasks" in r), [])
    for task in task_names:
        cells, before = [], None
        for r in results["runs"].values():
            if "tasks" not in r:
                cells.append("-")
                continue
            t = r["tasks"][task]
            cell = "{:.2f} [{:.2f}, {:.2f}]".format(t["pass@1"], *t["interval_95"])
            if before is not None and verifiable.mcnemar_p(before, t["correct"]) < verifiable.SIGNIFICANCE:
                cell += "*"  # differs from the stage before it
            cells.append(cell)
            before = t["correct"]
        rows.append((f"pass@1 {task}", cells))
    for task in task_names:
        rows.append(
            (
                f"pass@{verifiable.K} {task} (sampled)",
                [
                    "{:.2f} [{:.2f}, {:.2f}]".format(s[task]["pass@k"], *s[task]["interval_95"])
                    if (s := r.get("tasks_sampled"))
                    else "-"
                    for r in results["runs"].values()
                ],
            )
        )
    if task_names:
        rows.append(
            (
                f"maj@{verifiable.SAMPLES} all (sampled)",
                [
                    "{:.2f} [{:.2f}, {:.2f}]".format(s["all"]["majority"], *s["all"]["majority_interval_95"])
                    if (s := r.get("tasks_sampled"))
                    else "-"
                    for r in results["runs"].values()
                ],
            )
        )
    width = max(width, *(len(v) + 2 for _, values in rows for v in values))
    lines = [f"{label:<32}" + "".join(f"{v:>{width}}" for v in values) for label, values in rows]
    lines.append(
        f"\nheld-out text: {results['heldout_text_bytes']:,} bytes; bits/byte: model "
        + ", ".join(f"{pathlib.Path(n).name} {r['val_bpb']:.3f}" for n, r in results["runs"].items())
        + " | "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["compressors"].items())
    )
    if task_names:
        lines.append(
            f"pass@1: greedy, on held-out task problems, with Wilson 95% intervals; * differs from the stage before "
            f"it (McNemar's exact test, p < {verifiable.SIGNIFICANCE}); pass@{verifiable.K}: unbiased estimate from "
            f"{verifiable.SAMPLES} replies a problem at temperature 1, percentile-bootstrap 95% intervals; "
            f"maj@{verifiable.SAMPLES}: the answer most of those replies give (per task in the JSON), Wilson "
            "intervals; no higher than pass@1, it leaves DPO and GRPO little to sharpen"
        )
    scored = {n: r for n, r in results["runs"].items() if "samples" in r}
    if scored:
        lines.append(f"multiple choice: {next(iter(scored.values()))['mc_items']} items from {results['mc_source']}")
    for n, r in results["runs"].items():
        if "chat_tasks_skipped" in r:
            lines.append(f"{pathlib.Path(n).name}: multiple choice and replies skipped ({r['chat_tasks_skipped']})")
    for i, question in enumerate(results["sample_questions"] if scored else []):
        lines.append(f"\nuser: {question}")
        lines += [f"  {pathlib.Path(n).name}: {r['samples'][i].strip()[:160]!r}" for n, r in scored.items()]
    return "\n".join(lines)


def plot_tasks(results: dict, out: pathlib.Path) -> bool:
    """evaluation.png: greedy pass@1 and sampled pass@k per task and stage with 95% intervals, one panel each;
    False (nothing written) without task scores."""
    scored = {pathlib.Path(n).name: r for n, r in results["runs"].items() if "tasks" in r}
    if not scored:
        return False
    task_names = list(next(iter(scored.values()))["tasks"])
    width = 0.8 / len(scored)
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.3 * len(task_names)), 7.5), sharex=True)
    panels = (("tasks", "pass@1", "pass@1 (greedy)"), ("tasks_sampled", "pass@k", f"pass@{verifiable.K} (sampled)"))
    for ax, (key, figure, label) in zip(axes, panels):
        for i, (name, r) in enumerate(scored.items()):
            x = np.arange(len(task_names)) + (i - (len(scored) - 1) / 2) * width
            rate = np.array([r[key][t][figure] for t in task_names])
            low, high = (np.array([r[key][t]["interval_95"][j] for t in task_names]) for j in (0, 1))
            errors = np.maximum([rate - low, high - rate], 0.0)  # interval bounds sit a rounding away at 0 or 1
            ax.bar(x, rate, width, yerr=errors, capsize=3, label=name)
        ax.set(ylabel=f"{label}, 95% interval", ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("held-out verifiable tasks")
    axes[0].legend()
    axes[1].set_xticks(np.arange(len(task_names)), task_names)
    save_figure(fig, out)
    return True
