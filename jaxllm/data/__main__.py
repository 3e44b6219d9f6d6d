"""`python -m jaxllm.data --experiment=NAME [--data.key=value ...]`: prepare the data (sources -> clean -> dedup ->
tokenizer -> shards) and print the cleaning report; the train command does the same when the data is missing."""

from __future__ import annotations

import sys

from jaxllm.config import ConfigError, parse_cli
from jaxllm.data.prepare import prepare


def main(argv: list[str]) -> int:
    try:
        cfg, _ = parse_cli(argv, allowed_flags=())
        prepared = prepare(cfg, progress=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"prepared data in {prepared.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
