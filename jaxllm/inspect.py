"""`python -m jaxllm.inspect --run_dir=runs/base_dpo`: prints a run's lineage, data -> tokenizer -> pretraining ->
each post-training stage -> export, one block per link, with hashes, steps and final figures (jaxllm.eval.lineage)."""

from __future__ import annotations

import sys

from jaxllm.cli import ArgumentParser, run_main
from jaxllm.eval import lineage


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m jaxllm.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", required=True, help="a run directory (pretraining, post-training or imported)")
    args = parser.parse_args(argv)
    print(lineage.text(lineage.links(args.run_dir)))  # local or gs://
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
