"""`python -m jaxllm.data --experiment=NAME [--data.key=value ...]`: prepare the data (sources -> clean -> dedup ->
tokenizer -> shards) and print the cleaning report; the train command does the same when the data is missing."""

from __future__ import annotations

import sys

from jaxllm.cli import run_main
from jaxllm.config import parse_cli
from jaxllm.data.prepare import prepare


def main(argv: list[str]) -> int:
    cfg, _ = parse_cli(argv, allowed_flags=())
    prepared = prepare(cfg, progress=True)
    print(f"prepared data in {prepared.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
