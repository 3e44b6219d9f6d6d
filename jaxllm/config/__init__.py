"""Typed, frozen configuration: one dataclass per section, experiments as Python functions, CLI overrides.

An experiment is a file `experiments/NAME.py` (or any path) defining `config() -> Config`. Every field of every
section can be overridden on the command line as `--section.key=value` (nested sections: `--a.b.c=value`); the
value is parsed to the field's declared type, and unknown or mistyped keys raise `ConfigError` with a one-line
message. This package knows nothing of JAX: it is imported by every command, including the cheap ones.

Where each part lives (import from here; the names below are re-exported):
- schema.py: the sections' dataclasses (ModelConfig ... Config), LORA_TARGETS and ConfigError.
- clean.py: the data-cleaning section (CleanConfig), nested in DataConfig.
- validation.py: validate, the checks that need no devices or data, and parse_duration.
- load.py: load_experiment (and EXPERIMENTS_DIR), apply_overrides, parse_cli, config_from_dict, diff and replace.
"""

from jaxllm.config.load import (
    EXPERIMENTS_DIR,
    apply_overrides,
    config_from_dict,
    diff,
    load_experiment,
    parse_cli,
    replace,
)
from jaxllm.config.schema import (
    LORA_TARGETS,
    Config,
    ConfigError,
    DataConfig,
    DistributedConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    PosttrainConfig,
    TrainConfig,
)
from jaxllm.config.validation import parse_duration, validate

__all__ = [
    "EXPERIMENTS_DIR",
    "LORA_TARGETS",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimConfig",
    "PosttrainConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "diff",
    "load_experiment",
    "parse_cli",
    "parse_duration",
    "replace",
    "validate",
]
