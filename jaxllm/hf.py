"""Hugging Face interop for whole runs (the conversion itself is jaxllm.interop.hf):

python -m jaxllm.hf export --run_dir=runs/base --out=exported/ [--step=N]
python -m jaxllm.hf import --hf_dir=DIR --run_dir=runs/imported
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys

import jax

from jaxllm import sharding
from jaxllm import tokenizer as tok
from jaxllm.cli import ArgumentParser, run_main
from jaxllm.config import Config, ConfigError, DataConfig, config_from_dict
from jaxllm.interop import hf
from jaxllm.train import checkpoint
from jaxllm.train import step as step_lib
from jaxllm.train.checkpoint import load_run


def export(run_dir: pathlib.Path, out: pathlib.Path, step: int | None = None) -> pathlib.Path:
    run = load_run(run_dir, step)
    m = run.cfg.model
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = hf.hf_config(m)  # refuses what transformers cannot express before anything is written
    hf.write_safetensors(out / "model.safetensors", hf.to_hf_tensors(run.params, m))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "jaxllm.json").write_text(run.saved.to_json())
    name = hf.CHAR_TOKENIZER_NAME if run.tokenizer.path.suffix == ".json" else "tokenizer.model"
    shutil.copyfile(run.tokenizer.path, out / name)
    return out


def import_(hf_dir: pathlib.Path, run_dir: pathlib.Path) -> pathlib.Path:
    """Writes a step-0 checkpoint (parameters, fresh optimizer state) of the HF model into run_dir."""
    hf_dir, run_dir = pathlib.Path(hf_dir), pathlib.Path(run_dir)
    m, params = hf.load_hf(hf_dir)
    tokenizer_file = next(
        (hf_dir / n for n in ("tokenizer.model", hf.CHAR_TOKENIZER_NAME) if (hf_dir / n).is_file()), None
    )
    if tokenizer_file is None:
        raise ConfigError(
            f"--hf_dir={hf_dir} has neither a sentencepiece tokenizer.model nor {hf.CHAR_TOKENIZER_NAME}:"
            " jaxllm's tokenizers cannot read transformers' tokenizer.json"
        )
    saved = hf_dir / "jaxllm.json"
    if saved.is_file():
        cfg = config_from_dict(json.loads(saved.read_text()))
        runtime = {f: getattr(cfg.model, f) for f in ("compute_dtype", "kernels", "remat", "scan_layers")}
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, **runtime))
    else:
        cfg = Config(
            name=f"hf-{hf_dir.name}",
            model=m,
            data=DataConfig(tokenizer="char" if tokenizer_file.suffix == ".json" else "bpe"),
        )
    if (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--run_dir={run_dir} already holds checkpoints: import into a new directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    local_tokenizer = run_dir / ("tokenizer.json" if tokenizer_file.suffix == ".json" else "tokenizer.model")
    shutil.copyfile(tokenizer_file, local_tokenizer)
    mesh = sharding.make_mesh(cfg)
    trainer, _ = step_lib.make_trainer(cfg, mesh)
    with jax.set_mesh(mesh):
        state = step_lib.init_state(cfg, trainer, jax.device_put(params, trainer.state_shardings["params"]))
        mngr = checkpoint.manager(run_dir, keep=cfg.train.keep_checkpoints)
        checkpoint.save(mngr, 0, state, cfg, tok.load(local_tokenizer))
        mngr.wait_until_finished()
        mngr.close()
    (run_dir / "config.json").write_text(cfg.to_json())
    return run_dir


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m jaxllm.hf", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("export", help="run checkpoint -> transformers directory")
    ex.add_argument("--run_dir", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--step", type=int, default=None)
    im = commands.add_parser("import", help="transformers directory (safetensors) -> run checkpoint")
    im.add_argument("--hf_dir", required=True)
    im.add_argument("--run_dir", required=True)
    args = parser.parse_args(argv)
    if args.command == "export":
        out = export(pathlib.Path(args.run_dir), pathlib.Path(args.out), args.step)
        print(
            f"wrote {out}/config.json, model.safetensors and the tokenizer: "
            f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it"
        )
    else:
        run_dir = import_(pathlib.Path(args.hf_dir), pathlib.Path(args.run_dir))
        print(f"wrote a step-0 checkpoint to {run_dir}: python -m jaxllm.generate --run_dir={run_dir} --prompt=...")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
