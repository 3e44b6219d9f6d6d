"""Building a Config: from an experiment file, `--section.key=value` overrides and the command line (parse_cli,
which validates the result), or a run's saved config.json (config_from_dict); and the fields two configs differ in.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import typing

from jaxllm.config.schema import Config, ConfigError
from jaxllm.config.validation import validate

# experiments/ beside the package: a checkout, or an editable install of one (pip install -e .)
EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parents[2] / "experiments"


def load_experiment(name_or_path: str) -> Config:
    """`base` loads experiments/base.py; a path ending in .py loads that file. The file defines config()."""
    if name_or_path.endswith(".py") or "/" in name_or_path:
        path = pathlib.Path(name_or_path)
    else:
        path = EXPERIMENTS_DIR / f"{name_or_path}.py"
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))
        raise ConfigError(f"unknown experiment {name_or_path!r}: use one of {', '.join(known)} or a path to a .py file")
    spec = importlib.util.spec_from_file_location(f"jaxllm_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error in the experiment file: {e.msg}") from None
    except ConfigError:
        raise
    except Exception as e:  # an experiment is user code: any failure to load it is a bad input, not a crash
        raise ConfigError(f"{path}: the experiment file failed to load: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "config", None)):
        raise ConfigError(f"{path} defines no config() function returning a jaxllm Config")
    try:
        cfg = module.config()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{path}: config() failed: {type(e).__name__}: {e}") from None
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: config() returned {type(cfg).__name__}, expected jaxllm.config.Config")
    return cfg


def _parse_value(raw: str, typ, key: str):
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            value = float(raw)  # accepts 1e6 for integer fields, refuses 2.5
            if not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
        if origin is tuple:
            items = json.loads(raw) if raw.strip().startswith("[") else [s for s in raw.split(",") if s]
            if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
                raise ValueError
            return tuple(items)
    except (ValueError, json.JSONDecodeError):
        pass
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        typ, "a JSON list of strings, e.g. '[\"stdlib\"]'"
    )
    raise ConfigError(f"--{key}={raw!r}: expected {expected}")


def _set_path(obj, parts: list[str], raw: str, full_key: str):
    hints = typing.get_type_hints(type(obj))
    name = parts[0]
    if name not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(obj))
        raise ConfigError(f"unknown config key --{full_key}: {type(obj).__name__} has {known}")
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(parts) == 1:
            raise ConfigError(f"--{full_key} is a section: set one of its fields, e.g. --{full_key}.<field>=value")
        return dataclasses.replace(obj, **{name: _set_path(current, parts[1:], raw, full_key)})
    if len(parts) > 1:
        raise ConfigError(f"unknown config key --{full_key}: {'.'.join(parts[:1])} is not a section")
    return dataclasses.replace(obj, **{name: _parse_value(raw, hints[name], full_key)})


def apply_overrides(cfg: Config, overrides: dict[str, str]) -> Config:
    for key, raw in overrides.items():
        cfg = _set_path(cfg, key.split("."), raw, key)
    return cfg


def config_from_dict(data: dict, cls=Config):
    """Inverse of Config.to_dict (used to read a run's saved config)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        typ, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(typ):
            value = config_from_dict(value, typ)
        elif typing.get_origin(typ) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def diff(a, b, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two configs of the same class."""
    out = []
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(va):
            out += diff(va, vb, key + ".")
        elif va != vb:
            out.append(key)
    return out


def parse_cli(
    argv: list[str], *, allowed_flags: typing.Iterable[str] = (), switches: typing.Iterable[str] = ()
) -> tuple[Config, dict[str, str]]:
    """Splits `--experiment=X`, `--section.key=value` overrides and the command's own flags.

    Returns the resolved, validated Config and a dict of the command's own flags (those in allowed_flags, and the
    switches: flags that may stand bare, meaning 'true').
    """
    switches = set(switches)
    allowed = set(allowed_flags) | switches | {"experiment"}
    flags: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: options look like --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if key in switches:
                value = "true"  # a bare switch
            else:
                raise ConfigError(f"--{key} needs a value: write --{key}=VALUE")
        if "." in key:
            overrides[key] = value
        elif key in allowed:
            flags[key] = value
        else:
            raise ConfigError(
                f"unknown option --{key}: use --experiment=NAME, --section.key=value"
                + (
                    f" or one of {', '.join('--' + a for a in sorted(allowed - {'experiment'}))}"
                    if allowed - {"experiment"}
                    else ""
                )
            )
    cfg = load_experiment(flags.get("experiment", "base"))
    cfg = apply_overrides(cfg, overrides)
    return validate(cfg), flags


def replace(cfg, **changes):
    """dataclasses.replace, re-exported so experiments need only this module."""
    return dataclasses.replace(cfg, **changes)
