"""`python -m jaxllm.dpo --experiment=base_dpo [--section.key=value ...] [--run_dir=PATH]`: Direct Preference
Optimization (jaxllm.posttrain.dpo) on the training loop, from the run that train.init_from names."""

import sys

from jaxllm.cli import run_main
from jaxllm.posttrain.common import start_config
from jaxllm.posttrain.dpo import dpo_stage
from jaxllm.train.command import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, "dpo", lambda cfg: (start_config(cfg), dpo_stage))))
