"""`python -m jaxllm.dpo --experiment=base_dpo [--section.key=value ...] [--run_dir=PATH]`: see jaxllm.posttrain.dpo."""

import sys

from jaxllm.cli import run_main
from jaxllm.train import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, stage="dpo")))
