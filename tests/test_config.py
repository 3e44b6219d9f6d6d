import json
import subprocess
import sys

import pytest

from jaxllm.config import Config, ConfigError, apply_overrides, config_from_dict, diff, load_experiment, parse_cli


def test_overrides_parse_to_field_types():
    cfg = apply_overrides(
        Config(),
        {
            "train.steps": "200",
            "model.n_layer": "4",
            "optim.lr": "1e-3",
            "model.tie_embeddings": "false",
            "data.sources": '["stdlib", "file:a.txt"]',
            "train.batch_size": "1e2",
        },
    )
    assert (cfg.train.steps, cfg.model.n_layer, cfg.optim.lr) == (200, 4, 1e-3)
    assert cfg.model.tie_embeddings is False
    assert cfg.data.sources == ("stdlib", "file:a.txt")
    assert cfg.train.batch_size == 100 and isinstance(cfg.train.batch_size, int)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.stepz": "3"}, "unknown config key --train.stepz"),
        ({"trian.steps": "3"}, "unknown config key --trian.steps"),
        ({"train.steps": "ten"}, "expected an integer"),
        ({"train.steps": "2.5"}, "expected an integer"),
        ({"model.tie_embeddings": "maybe"}, "expected true or false"),
        ({"train": "3"}, "is a section"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), overrides)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--experiment=nope"], "unknown experiment 'nope'"),
        (["--model.n_embd=100", "--model.n_head=3"], "not divisible by model.n_head=3"),
        (["--train.steps=0"], "train.steps=0: must be at least 1"),
        (["--mesh.data=-1", "--mesh.fsdp=-1"], "at most one of"),
        (["--bogus=1"], "unknown option --bogus"),
        (["positional"], "unexpected argument"),
    ],
)
def test_parse_cli_validates(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_cli(argv, allowed_flags=("run_dir",))


def test_experiment_roundtrips_through_dict_and_diff_names_fields():
    cfg = load_experiment("base")
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    other = apply_overrides(cfg, {"model.n_layer": "7", "optim.lr": "0.5"})
    assert diff(cfg, other) == ["model.n_layer", "optim.lr"]


def test_experiment_from_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from jaxllm.config import Config\ndef config():\n    return Config(name='mine')\n")
    assert load_experiment(str(path)).name == "mine"


def test_cli_error_is_one_line_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm.train", "--model.n_embd=100", "--model.n_head=3", f"--run_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: model.n_embd=100 is not divisible by model.n_head=3: pick a multiple"
    ]
    assert not run_dir.exists()
