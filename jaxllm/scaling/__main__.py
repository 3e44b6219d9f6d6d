"""`python -m jaxllm.scaling`: the IsoFLOP sweep, see jaxllm.scaling.sweep."""

import sys

from jaxllm.cli import run_main
from jaxllm.scaling.sweep import main

if __name__ == "__main__":
    sys.exit(run_main(main))
