"""The command of every training stage: `python -m jaxllm.train` (pretraining), `jaxllm.sft`, `jaxllm.dpo`, `jaxllm.rl`.

  python -m jaxllm.train --experiment=base [--section.key=value ...] [--run_dir=PATH] [--print_config]

The run lives in --run_dir (default runs/<experiment>; gs://bucket/path for object storage, the same on every
host); its full config is written to <run_dir>/config.json and printed only with --print_config.
"""

from __future__ import annotations

import pathlib
from typing import Callable

from jaxllm import machine, storage
from jaxllm.config import Config, ConfigError, parse_cli
from jaxllm.train import distributed, supervisor
from jaxllm.train.loop import run
from jaxllm.train.stage import Stage, pretraining

COMMANDS = {"": "jaxllm.train", "sft": "jaxllm.sft", "dpo": "jaxllm.dpo", "rl": "jaxllm.rl"}


def main(
    argv: list[str], stage: str = "", start: Callable[[Config], tuple[Config, Callable[..., Stage]]] | None = None
) -> int:
    """stage: the command's posttrain.stage ('' pretraining); start(cfg) -> (cfg, make_stage) for post-training."""
    cfg, flags = parse_cli(argv, allowed_flags=("run_dir",), switches=("print_config",))
    if cfg.posttrain.stage != stage:
        raise ConfigError(
            f"experiment {cfg.name!r} has posttrain.stage={cfg.posttrain.stage!r}: run it with "
            f"python -m {COMMANDS.get(cfg.posttrain.stage, 'jaxllm.train')}"
        )
    show_config = flags.get("print_config", "false").lower() in ("1", "true", "yes")
    run_dir = storage.path(flags.get("run_dir") or f"runs/{pathlib.Path(flags.get('experiment', 'base')).stem}")
    supervisor.supervise(cfg.distributed)  # several processes: forks; the pid started becomes a light parent
    distributed.initialize(cfg.distributed)  # before anything touches JAX, reading a checkpoint included
    make_stage = pretraining
    if start is not None:
        cfg, make_stage = start(cfg)
    run(cfg, run_dir, make_stage=make_stage, show_config=show_config, started_at=machine.process_start())
    return 0
