"""`python -m jaxllm.evaluate --run_dir=runs/base_dpo [--run_dir=...] [--choices=FILE.jsonl]`: one column per run
(and the runs each started from), printed as a table and written as JSON, with a PNG of pass@1 per task and
stage. See jaxllm.eval.suite."""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

from etils import epath

from jaxllm import storage
from jaxllm.cli import ArgumentParser, run_main
from jaxllm.config import ConfigError
from jaxllm.eval import verifiable
from jaxllm.eval.suite import evaluate_runs, format_table, lineage, plot_tasks


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m jaxllm.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", action="append", required=True, help="repeat for several runs")
    parser.add_argument(
        "--lineage",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="also evaluate the runs each started from (default true)",
    )
    parser.add_argument("--choices", default="", help="multiple-choice JSONL (default: the embedded task)")
    parser.add_argument("--text_windows", type=int, default=64, help="held-out windows of model.block_size")
    parser.add_argument(
        "--per_task", type=int, default=verifiable.PER_TASK, help="held-out problems scored per verifiable task"
    )
    parser.add_argument("--out", default="", help="JSON file (default: <last run_dir>/evaluation.json)")
    args = parser.parse_args(argv)
    if args.per_task < 1:
        raise ConfigError(
            f"--per_task={args.per_task}: score at least 1 problem a task (default {verifiable.PER_TASK})"
        )
    run_dirs: list[epath.Path] = []
    for d in map(storage.path, args.run_dir):
        if not (d / "checkpoints").is_dir():
            raise ConfigError(f"--run_dir={d} holds no checkpoints: train it first")
        for r in lineage(d) if args.lineage else [d]:
            if r not in run_dirs:
                run_dirs.append(r)
    results = evaluate_runs(run_dirs, args.choices, args.text_windows, args.per_task)
    print(format_table(results))
    out = storage.path(args.out or storage.path(args.run_dir[-1]) / "evaluation.json")
    storage.write_bytes(out, json.dumps(results, indent=2).encode())
    written = [str(out)]
    with tempfile.TemporaryDirectory() as tmp:  # the plot is drawn locally, then written whole where `out` is
        png = pathlib.Path(tmp) / "tasks.png"
        if plot_tasks(results, png):
            storage.write_bytes(out.with_suffix(".png"), png.read_bytes())
            written.append(str(out.with_suffix(".png")))
    print(f"\nwritten: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
