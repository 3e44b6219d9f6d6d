"""`python -m jaxllm.bench storage`: issue 21's storage target, measured: a run against a GCS emulator with injected
failures finishes with the same losses as without them.

`python -m jaxllm.train --experiment=base` (a fixed run of --steps steps, every step logged, a checkpoint every
--checkpoint_every, all kept) trains into gs:// on a local emulator twice, through the fault proxy of
jaxllm.bench.gcs_emulator: once passing everything, once failing every n-th request of each kind on FAULTS
(503s, 429s, dropped connections) up to a limit. The table: faults injected by kind, the requests that retried a
failed one, whether every logged loss and evaluation equals the run without faults, the checkpoint steps present
against those expected, and wall time. Not a test of GCS itself: the emulator is a stub of its JSON API.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from etils import epath

from jaxllm.bench.gcs_emulator import Emulator, Fault, FaultProxy, environ_with
from jaxllm.config import ConfigError

BUCKET = "jaxllm-bench"
# (kind, every n-th request of it, action, at most): a few of each, spread over the run
FAULTS = (
    ("upload", 7, "503", 4),
    ("upload", 11, "429", 3),
    ("upload", 13, "drop", 3),
    ("download", 5, "503", 3),
    ("download", 9, "drop", 2),
    ("list", 4, "503", 3),
    ("metadata", 6, "429", 4),
)


def _count(flags: dict[str, str], name: str, default: int) -> int:
    text = flags.get(name, str(default))
    if not text.isdigit() or int(text) == 0:
        raise ConfigError(f"--{name}={text!r}: expected a whole number >= 1, such as --{name}={default}")
    return int(text)


def _train(proxy: FaultProxy, run_dir: str, steps: int, every: int, extra: list[str]) -> tuple[dict, float]:
    """One training process into run_dir; its exit status and output tail (on failure), and its wall time."""
    command = [sys.executable, "-m", "jaxllm.train", "--experiment=base", f"--run_dir={run_dir}"]
    command += ["--train.budget=", f"--train.steps={steps}", "--train.log_every=1", f"--train.eval_every={steps}"]
    command += [f"--train.checkpoint_every={every}", f"--train.keep_checkpoints={steps}", "--train.sample_tokens=4"]
    start = time.perf_counter()
    done = subprocess.run(command + extra, env=environ_with(proxy.endpoint), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"training into {run_dir} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done, wall


def _logged(run_dir: str) -> list[tuple]:
    records = [json.loads(line) for line in epath.Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records if "loss" in r or "val_loss" in r]


def _checkpoints(run_dir: str) -> list[int]:
    return sorted(int(p.name) for p in epath.Path(run_dir, "checkpoints").iterdir() if p.name.isdigit())


def bench_storage(flags: dict[str, str], extra: list[str]) -> dict:
    """Both runs and their comparison (see the module docstring). extra: --section.key=value overrides of base."""
    steps, every = _count(flags, "steps", 20), _count(flags, "checkpoint_every", 5)
    expected = sorted({*range(every, steps + 1, every), steps})
    emulator = Emulator(BUCKET)
    proxy = FaultProxy(emulator.endpoint)
    env_for_reads = environ_with(proxy.endpoint)
    rows = {}
    try:
        for name, faults in (("without faults", []), ("with faults", [Fault(*f) for f in FAULTS])):
            run_dir = f"gs://{BUCKET}/runs/{name.replace(' ', '_')}"
            proxy.arm(faults)
            _, wall = _train(proxy, run_dir, steps, every, extra)
            rows[name] = {
                "injected": proxy.injected(),
                "retries": proxy.retries,
                "requests": dict(proxy.seen),
                "wall_s": wall,
                "run_dir": run_dir,
            }
            proxy.arm([])
            rows[name] |= _read_back(run_dir, env_for_reads)
    finally:
        proxy.stop()
        emulator.stop()
    clean, faulty = rows["without faults"], rows["with faults"]
    for row in rows.values():
        row["losses_equal"] = row["logged"] == clean["logged"]
        row["checkpoints_complete"] = row["checkpoints"] == expected
    return {
        "experiment": "base",
        "steps": steps,
        "checkpoint_every": every,
        "expected_checkpoints": expected,
        "faults": [dict(zip(("kind", "every", "action", "limit"), f)) for f in FAULTS],
        "runs": rows,
        "target_met": bool(
            faulty["losses_equal"] and faulty["checkpoints_complete"] and any(faulty["injected"].values())
        ),
    }


def _read_back(run_dir: str, env: dict) -> dict:
    """The run's logged losses and checkpoint steps, read from the bucket in a process of their own (this one's
    gcsfs is not pointed at the emulator)."""
    code = (
        "import json, sys\nfrom jaxllm.bench.storage import _logged, _checkpoints\n"
        f"print(json.dumps({{'logged': _logged({run_dir!r}), 'checkpoints': _checkpoints({run_dir!r})}}))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.splitlines()[-1])
    return {"logged": [tuple(x) for x in out["logged"]], "checkpoints": out["checkpoints"]}


def storage_table(result: dict) -> str:
    lines = [
        f"python -m jaxllm.train --experiment=base, {result['steps']} steps, a checkpoint every "
        f"{result['checkpoint_every']}, into gs:// on the local emulator through the fault proxy",
        "",
        "| run | faults injected | retries seen | losses equal | checkpoint steps present | wall s |",
        "|---|---|---:|---|---|---:|",
    ]
    for name, r in result["runs"].items():
        injected = ", ".join(f"{k} {v}" for k, v in r["injected"].items() if v) or "none"
        present = f"{len(r['checkpoints'])}/{len(result['expected_checkpoints'])}"
        lines.append(
            f"| {name} | {injected} ({sum(r['injected'].values())}) | {r['retries']} | "
            f"{'yes' if r['losses_equal'] else 'NO'} ({len(r['logged'])} records) | {present} "
            f"{r['checkpoints']} | {r['wall_s']:.1f} |"
        )
    lines.append(f"\ntarget (same losses with faults, nothing lost): {'met' if result['target_met'] else 'NOT MET'}")
    return "\n".join(lines)
