"""`python -m jaxllm.train`: see jaxllm.train.command."""

import sys

from jaxllm.cli import run_main
from jaxllm.train.command import main

if __name__ == "__main__":
    sys.exit(run_main(main))
