"""`python -m jaxllm.bench resilience`: issue 21's two targets for runs that get preempted, measured.

1. Preemption: one tiny run on a few stdlib files (every step logged, a checkpoint every CHECKPOINT_EVERY steps so
   that kills land in asynchronous saves) is started, signalled and restarted in one run directory, trial after
   trial, as a preemptible VM's job would be: SIGTERM must end it with status 75 and a committed checkpoint at the
   step it stopped at; kill -9 may leave anything. Each restart (the next trial's process, then the run's
   completion) must resume and log exactly the losses of the same run left alone (a later record of a step wins:
   steps after the last checkpoint are logged again). The signal, the number of steps before it, and whether it
   aims at a step or at a save in flight, come from the seed (`plan_trials`).
2. Checkpoint overhead of asynchronous saves on the training step, for `base` and the GPT-2 124M shape
   (jaxllm.bench.save_overhead).

Not a test of multi-host preemption (tests/test_preemption.py and tests/test_multihost.py cover the paths).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

from jaxllm.bench.save_overhead import WINDOW_S, base_config, gpt2_124m_config, overhead, overhead_line
from jaxllm.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from jaxllm.data.prepare import prepare
from jaxllm.data.sources import stdlib_root
from jaxllm.train.preemption import EXIT_PREEMPTED

CHECKPOINT_EVERY = 5  # a save every 5 steps of a 12 ms step keeps a save in flight about half of the time
MAX_STEPS_BEFORE_SIGNAL = 30
CORPUS_FILES = (
    "textwrap.py", "string.py", "glob.py", "fnmatch.py", "bisect.py", "heapq.py", "shlex.py", "difflib.py",
    "json/decoder.py", "json/encoder.py", "json/scanner.py", "csv.py", "colorsys.py", "calendar.py", "base64.py",
    "locale.py", "tokenize.py", "keyword.py", "copy.py", "pprint.py", "reprlib.py", "numbers.py", "statistics.py",
    "fractions.py", "random.py", "operator.py", "abc.py", "enum.py", "functools.py",
)  # fmt: skip
STEP_LINE = re.compile(r"step (\d+)/")
RESUMED = re.compile(r"resuming at step (\d+)")
STOPPED = re.compile(r"stopped at step (\d+) of")


def trial_counts(flags: dict[str, str]) -> tuple[int, int, int]:
    """(--trials_term, --trials_kill, --seed) from the command's flags; refuses what is not a count."""
    values = []
    for name, default in (("trials_term", 20), ("trials_kill", 10), ("seed", 0)):
        text = flags.get(name, str(default))
        if not text.isdigit():
            raise ConfigError(f"--{name}={text!r}: expected a whole number >= 0, such as --{name}={default}")
        values.append(int(text))
    if values[0] + values[1] == 0:
        raise ConfigError("--trials_term=0 and --trials_kill=0: ask for at least one trial")
    return values[0], values[1], values[2]


# ---------------------------------------------------------------------------------------------------------------
# pure parts: the plan of trials, where a signal aims, losses from a log


def plan_trials(n_term: int, n_kill: int, seed: int) -> list[dict]:
    """The trials in the order they run: signal, steps to run after the restart before it, and whether it aims at
    a step or at a save in flight (half of each kind, rounded down for saves)."""
    rng = random.Random(seed)
    trials = [
        {"signal": name, "during": "save" if i < n // 2 else "step"}
        for name, n in (("SIGTERM", n_term), ("SIGKILL", n_kill))
        for i in range(n)
    ]
    rng.shuffle(trials)
    return [{**t, "after_steps": rng.randint(1, MAX_STEPS_BEFORE_SIGNAL)} for t in trials]


def signal_step(resumed: int, after_steps: int, during: str, every: int) -> int:
    """The step whose log line the signal follows: `after_steps` past the resumed step, moved up to the next save
    step (a save starts right after that line) or off a save step (a step follows it)."""
    target = resumed + after_steps
    if during == "save":
        return -(-target // every) * every
    return target + 1 if target % every == 0 else target


def steps_needed(trials: list[dict], every: int) -> int:
    """A run long enough that no trial's signal comes after its end: every trial's steps and rounding, plus one
    interval for the completion."""
    return sum(t["after_steps"] + every for t in trials) + every


def losses(lines: list[str]) -> dict[int, float]:
    """step -> loss of a metrics.jsonl's lines; a later record of a step wins (steps after the checkpoint a run
    resumed from are logged again)."""
    records = (json.loads(line) for line in lines if line.strip())
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def differing(logged: dict[int, float], reference: dict[int, float]) -> list[int]:
    """The logged steps whose loss is not exactly the reference's (or that the reference has not)."""
    return sorted(s for s, loss in logged.items() if reference.get(s) != loss)


# ---------------------------------------------------------------------------------------------------------------
# 1. preemption trials on a real `python -m jaxllm.train` process


def _tiny_config(root: pathlib.Path, steps: int) -> Config:
    return Config(
        name="resilience",
        model=ModelConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=32, compute_dtype="float32"),
        data=DataConfig(sources=(f"dir:{root / 'corpus'}",), val_fraction=0.15, cache_dir=str(root / "cache")),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        train=TrainConfig(
            steps=steps,
            batch_size=4,
            log_every=1,
            eval_every=steps,
            eval_batches=2,
            checkpoint_every=CHECKPOINT_EVERY,
            sample_tokens=2,
            peak_tflops=1.0,
        ),
    )


def _setup(root: pathlib.Path, steps: int) -> pathlib.Path:
    """The corpus and the experiment file (the config as JSON, so every process trains the same run)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "corpus").mkdir(parents=True)
    for name in CORPUS_FILES:
        shutil.copy(stdlib_root() / name, root / "corpus" / name.replace("/", "_"))
    experiment = root / "resilience_run.py"
    experiment.write_text(
        "import json\nfrom jaxllm.config import config_from_dict\n\n\ndef config():\n"
        f"    return config_from_dict(json.loads({_tiny_config(root, steps).to_json()!r}))\n"
    )
    return experiment


class _Attempt:
    """One `python -m jaxllm.train` process on run_dir; its metrics lines are those appended while it ran."""

    def __init__(self, experiment: pathlib.Path, run_dir: pathlib.Path, env: dict):
        self.run_dir = run_dir
        self.lines_before = len(self._lines())
        self.tmp_before = self.saves_in_flight()
        self.start_from = max(self.committed(), default=0)  # the step it will resume from (0: a fresh start)
        command = [sys.executable, "-m", "jaxllm.train", f"--experiment={experiment}", f"--run_dir={run_dir}"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.resumed = 0
        self.stdout, self.stderr = "", ""

    def _lines(self) -> list[str]:
        path = self.run_dir / "metrics.jsonl"
        return path.read_text().splitlines() if path.is_file() else []

    def saves_in_flight(self) -> set[str]:
        folder = self.run_dir / "checkpoints"
        return {p.name for p in folder.glob("*.orbax-checkpoint-tmp*")} if folder.is_dir() else set()

    def committed(self) -> list[int]:
        folder = self.run_dir / "checkpoints"
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []

    def wait_for_step(self, step: int) -> bool:
        """Reads its output up to the progress line of `step`; False if it ended first."""
        for line in self.process.stdout:
            if m := RESUMED.search(line):
                self.resumed = int(m.group(1))
            if (m := STEP_LINE.match(line)) and int(m.group(1)) >= step:
                return True
        return False

    def wait_for_save(self, step: int, timeout_s: float = 2.0) -> None:
        """Returns once `step`'s save is being written (its temporary folder exists), or after timeout_s."""
        until = time.monotonic() + timeout_s
        while time.monotonic() < until and not any(n.startswith(f"{step}.") for n in self.saves_in_flight()):
            time.sleep(0.001)

    def finish(self, timeout_s: float = 600) -> int:
        out, err = self.process.communicate(timeout=timeout_s)
        self.stdout += out
        self.stderr += err
        if m := RESUMED.search(self.stdout):
            self.resumed = int(m.group(1))
        return self.process.returncode

    def logged(self) -> dict[int, float]:
        return losses(self._lines()[self.lines_before :])


def _interrupt(attempt: _Attempt, trial: dict) -> dict:
    """Signals the attempt as the trial plans; what happened to it (the resume is filled in by the next one)."""
    aim = signal_step(attempt.start_from, trial["after_steps"], trial["during"], CHECKPOINT_EVERY)
    if not attempt.wait_for_step(aim):
        status = attempt.finish()
        return {
            **trial,
            "aimed_at": aim,
            "status": status,
            "committed": attempt.committed(),
            "clean_stop": False,
            "own_losses": attempt.logged(),
            "error": f"the run ended before the signal: {attempt.stderr[-500:]}",
        }
    if trial["during"] == "save":
        attempt.wait_for_save(aim)
    in_flight = bool(attempt.saves_in_flight() - attempt.tmp_before)
    attempt.process.send_signal(getattr(signal, trial["signal"]))
    status = attempt.finish()
    left = attempt.saves_in_flight() - attempt.tmp_before
    logged = attempt.logged()
    stopped = STOPPED.search(attempt.stderr)
    row = {
        **trial,
        "aimed_at": aim,
        "landed_at": int(stopped.group(1)) if stopped else max(logged, default=attempt.resumed),
        "save_in_flight": in_flight if trial["signal"] == "SIGTERM" else bool(left),
        "status": status,
        "committed": attempt.committed(),
        "started_from": attempt.resumed,
        "own_losses": logged,
    }
    if trial["signal"] == "SIGTERM":
        row["clean_stop"] = status == EXIT_PREEMPTED and bool(stopped) and max(row["committed"]) == row["landed_at"]
    else:
        row["clean_stop"] = status == -signal.SIGKILL
    return row


def _judge(row: dict, rerun: _Attempt, reference: dict[int, float]) -> dict:
    """The trial's row with its resume: where the rerun started, and whether both processes' losses are exact."""
    own, again = row.pop("own_losses"), rerun.logged()
    wrong = differing(own, reference) + differing(again, reference)
    return {
        **row,
        "resumed_from": rerun.resumed,
        "resumed_from_latest": rerun.resumed == rerun.start_from,  # the latest committed checkpoint, as it found it
        "losses_checked": len(own) + len(again),
        "equal": not wrong,
        "differing_steps": wrong[:10],
        "ok": row["clean_stop"] and not wrong and rerun.resumed == rerun.start_from,
    }


def preemption_trials(n_term: int, n_kill: int, seed: int, root: pathlib.Path) -> dict:
    trials = plan_trials(n_term, n_kill, seed)
    steps = steps_needed(trials, CHECKPOINT_EVERY)
    experiment = _setup(root, steps)
    # restarts load their compiled programs from disk, as a preempted job's would; nothing here is timed
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "JAX_ENABLE_COMPILATION_CACHE": "true",
        "JAX_COMPILATION_CACHE_DIR": str(root / "xla"),
    }
    t0 = time.perf_counter()
    alone = _Attempt(experiment, root / "alone", env)
    if alone.finish():
        raise RuntimeError(f"the uninterrupted run failed: {alone.stderr[-2000:]}")
    reference = alone.logged()
    print(f"reference: {len(reference)} steps, uninterrupted, in {time.perf_counter() - t0:.0f} s", flush=True)
    run_dir, rows, previous = root / "run", [], None
    for i, trial in enumerate(trials):
        attempt = _Attempt(experiment, run_dir, env)
        row = _interrupt(attempt, trial)
        if previous is not None:
            rows.append(_judge(previous, attempt, reference))
            print(_trial_line(len(rows), rows[-1]), flush=True)
        previous = row
    last = _Attempt(experiment, run_dir, env)
    status = last.finish()
    rows.append(_judge(previous, last, reference))
    print(_trial_line(len(rows), rows[-1]), flush=True)
    final = losses((run_dir / "metrics.jsonl").read_text().splitlines())
    return {
        "steps": steps,
        "checkpoint_every": CHECKPOINT_EVERY,
        "seed": seed,
        "mode": "one run directory through every interruption; each trial's rerun is the next trial's process",
        "config": json.loads(_tiny_config(root, steps).to_json())["model"],
        "trials": rows,
        "completion_status": status,
        "final_equal": status == 0 and final == reference and sorted(final) == list(range(1, steps + 1)),
        "wall_s": time.perf_counter() - t0,
    }


def _trial_line(i: int, r: dict) -> str:
    return (
        f"trial {i}: {r['signal']} aimed at {r['during']} step {r['aimed_at']}, landed at {r.get('landed_at')}, "
        f"save in flight {r.get('save_in_flight')}, status {r['status']}, resumed from {r['resumed_from']}, "
        f"equal {r['equal']}"
    )


def bench_resilience(n_term: int, n_kill: int, seed: int, rounds: int, root: pathlib.Path) -> dict:
    trials = preemption_trials(n_term, n_kill, seed, root / "trials")
    base = base_config(steps=1000)
    tokenizer = prepare(base, progress=False).tokenizer  # every checkpoint carries one, as the loop's do
    base_row = overhead(base, tokenizer, rounds, WINDOW_S, root / "base_ckpt")
    print(f"base: {overhead_line(base_row)}", flush=True)
    gpt2_row = overhead(gpt2_124m_config(1), tokenizer, 1, 2 * WINDOW_S, root / "gpt2_ckpt")
    print(f"gpt2_124m: {overhead_line(gpt2_row)}", flush=True)
    return {"preemption": trials, "overhead": {"base": base_row, "gpt2_124m": gpt2_row}}


def resilience_table(result: dict) -> str:
    p = result["preemption"]
    rows = p["trials"]
    ok = {
        s: (sum(r["ok"] for r in rows if r["signal"] == s), sum(r["signal"] == s for r in rows))
        for s in ("SIGTERM", "SIGKILL")
    }
    lines = [
        f"preemption: a {p['config']['n_layer']} x {p['config']['n_embd']} model, {p['steps']} steps, a checkpoint "
        f"every {p['checkpoint_every']}, seed {p['seed']}; {p['mode']}; {p['wall_s']:.0f} s",
        "",
        "| # | signal | aimed at | landed at step | save in flight | exit status | resumed from | losses checked "
        "| equal |",
        "|---:|---|---|---:|---|---:|---:|---:|---|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"| {i} | {r['signal']} | {r['during']} {r['aimed_at']} | {r.get('landed_at', '-')} | "
            f"{'yes' if r.get('save_in_flight') else 'no'} | {r['status']} | {r['resumed_from']} | "
            f"{r['losses_checked']} | {'yes' if r['ok'] else 'NO'} |"
        )
    total = sum(r["ok"] for r in rows)
    lines += [
        "",
        f"resumes with the uninterrupted run's losses: {total}/{len(rows)} (SIGTERM {ok['SIGTERM'][0]}/"
        f"{ok['SIGTERM'][1]} exiting 75 with a checkpoint at the stopped step, kill -9 {ok['SIGKILL'][0]}/"
        f"{ok['SIGKILL'][1]}); saves in flight at the signal: {sum(bool(r.get('save_in_flight')) for r in rows)}; "
        f"completed run equal to the uninterrupted one at every step: {'yes' if p['final_equal'] else 'NO'}",
        "",
        "| model | tokens/step | state MiB | step ms | save blocking ms | commit s | checkpoint_every | "
        "window (steps) with / without a save | overhead: blocking | overhead: window |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, r in result["overhead"].items():
        lines.append(
            f"| {name} ({r['model']}) | {r['tokens_per_step']:,} | {r['state_mib']:,.0f} | {1e3 * r['step_s']:,.1f} | "
            f"{1e3 * r['blocking_s']:,.0f} | {r['commit_s']:.2f} | {r['checkpoint_every']} | "
            f"{r['window_ratio']:.3f} ({r['window_ratio_range'][0]:.3f}-{r['window_ratio_range'][1]:.3f}) over "
            f"{r['window']} steps x {r['rounds']} rounds | {100 * r['overhead_blocking']:.2f}% | "
            f"{100 * r['overhead_window']:.2f}% |"
        )
    lines.append(
        "\noverhead: blocking = the save call's time / (checkpoint_every x step time); window = (window with a save "
        "- window without) / (checkpoint_every x step time), commit waited for inside the window"
    )
    return "\n".join(lines)
