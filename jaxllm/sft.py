"""`python -m jaxllm.sft --experiment=base_sft [--section.key=value ...] [--run_dir=PATH]`: supervised fine-tuning
(jaxllm.posttrain.sft) on the training loop, from the run that train.init_from names."""

import sys

from jaxllm.cli import run_main
from jaxllm.posttrain.common import start_config
from jaxllm.posttrain.sft import sft_stage
from jaxllm.train.command import main

if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv, "sft", lambda cfg: (start_config(cfg), sft_stage))))
