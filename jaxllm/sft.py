"""`python -m jaxllm.sft --experiment=base_sft [--section.key=value ...] [--run_dir=PATH]`: see jaxllm.posttrain.sft."""

import sys

from jaxllm.cli import run_main
from jaxllm.train import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, stage="sft")))
