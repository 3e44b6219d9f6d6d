"""`python -m jaxllm.rl --experiment=base_rl [--section.key=value ...] [--run_dir=PATH]`: reinforcement learning on
verifiable rewards (GRPO, jaxllm.posttrain.rl) on the training loop, from the run that train.init_from names."""

import sys

from jaxllm.cli import run_main
from jaxllm.posttrain.common import start_config
from jaxllm.posttrain.rl import rl_stage
from jaxllm.train.command import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, "rl", lambda cfg: (start_config(cfg), rl_stage))))
