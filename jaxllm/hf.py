"""Hugging Face interop for whole runs (the conversion itself is jaxllm.interop.hf):

python -m jaxllm.hf export --run_dir=runs/base --out=exported/ [--step=N]
python -m jaxllm.hf import --hf_dir=DIR --run_dir=runs/imported

Export also writes the model card (README.md: data, training and evaluation figures, lineage) and records itself in
the run's exports.jsonl, which python -m jaxllm.inspect shows as the lineage's last link.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys

import jax
from etils import epath

from jaxllm import sharding, storage
from jaxllm import tokenizer as tok
from jaxllm.cli import ArgumentParser, run_main
from jaxllm.config import Config, ConfigError, DataConfig, ModelConfig, config_from_dict
from jaxllm.eval import lineage
from jaxllm.interop import hf, hf_tokenizer
from jaxllm.train import checkpoint, provenance
from jaxllm.train import step as step_lib
from jaxllm.train.checkpoint import load_run


def export(run_dir: str | os.PathLike, out: pathlib.Path, step: int | None = None) -> pathlib.Path:
    """Writes the run's checkpoint (local or gs://) as a transformers directory `out` (local)."""
    run = load_run(run_dir, step)
    m = run.cfg.model
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = run.tokenizer
    # refuses what transformers cannot express before anything is written
    config = hf.hf_config(m) | {"bos_token_id": t.bos, "eos_token_id": t.eos, "pad_token_id": t.pad}
    hf.write_safetensors(out / "model.safetensors", hf.to_hf_tensors(run.params, m))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # the weights written are whole (a LoRA run's merged), so the config beside them describes a model without adapters
    whole = dataclasses.replace(run.saved, posttrain=dataclasses.replace(run.saved.posttrain, lora_rank=0))
    (out / "jaxllm.json").write_text(whole.to_json())
    if not isinstance(t, tok.HFTokenizer):  # the run's own file, which import reads back
        shutil.copyfile(t.path, out / (hf.CHAR_TOKENIZER_NAME if t.path.suffix == ".json" else "tokenizer.model"))
    if not isinstance(t, tok.CharTokenizer):  # what transformers' AutoTokenizer reads
        hf_tokenizer.write_hf_files(t, out)
    lineage.record_export(run_dir, out, run.step)
    (out / "README.md").write_text(lineage.card(lineage.links(run_dir, run.step), out))
    return out


# the tokenizer files import reads, preferred in this order: a checkpoint that has both tokenizer.json and a
# sentencepiece tokenizer.model (Llama 2) is read through tokenizer.json, which names its own special ids; a jaxllm
# export (jaxllm.json beside) through its run's own file, of which its tokenizer.json is a copy for transformers
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", hf.CHAR_TOKENIZER_NAME)
TOKENIZER_KINDS = {"tokenizer.model": "bpe", hf.CHAR_TOKENIZER_NAME: "char"}


def _tokenizer_file(hf_dir: pathlib.Path) -> str:
    preferred = TOKENIZER_FILES[1:] + TOKENIZER_FILES[:1] if (hf_dir / "jaxllm.json").is_file() else TOKENIZER_FILES
    found = next((name for name in preferred if (hf_dir / name).is_file()), None)
    if found is None:
        raise ConfigError(
            f"--hf_dir={hf_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the checkpoint's "
            "tokenizer beside it (transformers: AutoTokenizer.from_pretrained(...).save_pretrained(DIR))"
        )
    return found


def _import_tokenizer(
    hf_dir: pathlib.Path, found: str, m: ModelConfig, params: dict
) -> tuple[str, bytes, str, ModelConfig, dict]:
    """The tokenizer file a run keeps (name and content) for the checkpoint's tokenizer file `found`, its
    data.tokenizer kind, and the model config and params (grown by the chat tokens a tokenizer.json gains:
    jaxllm.interop.hf_tokenizer)."""
    if found == "tokenizer.json":
        stored, gained, n_tokens = hf_tokenizer.stored_tokenizer(hf_dir, m.vocab_size)
        m, params = hf.add_token_rows(m, params, gained, n_tokens)
        return tok.HF_TOKENIZER_NAME, json.dumps(stored, ensure_ascii=False).encode(), "hf", m, params
    name = "tokenizer.json" if found == hf.CHAR_TOKENIZER_NAME else "tokenizer.model"
    return name, (hf_dir / found).read_bytes(), TOKENIZER_KINDS[found], m, params


def import_(hf_dir: pathlib.Path, run_dir: str | os.PathLike) -> epath.Path:
    """Writes a step-0 checkpoint (parameters, fresh optimizer state) of the HF model into run_dir (local or gs://)."""
    hf_dir, run_dir = pathlib.Path(hf_dir), storage.path(run_dir)
    found = _tokenizer_file(hf_dir)  # before reading gigabytes of weights
    tokenizer_name, tokenizer_data, kind, m, params = _import_tokenizer(hf_dir, found, *hf.load_hf(hf_dir))
    saved = hf_dir / "jaxllm.json"
    if saved.is_file():
        cfg = config_from_dict(json.loads(saved.read_text()))
        runtime = {f: getattr(cfg.model, f) for f in ("compute_dtype", "kernels", "remat", "scan_layers")}
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, **runtime))
    else:
        cfg = Config(name=f"hf-{hf_dir.name}", model=m, data=DataConfig(tokenizer=kind))
    if (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--run_dir={run_dir} already holds checkpoints: import into a new directory")
    local = storage.local_cache(run_dir)  # the tokenizer libraries read local files: a gs:// run's, a local copy
    local.mkdir(parents=True, exist_ok=True)
    (local / tokenizer_name).write_bytes(tokenizer_data)
    mesh = sharding.make_mesh(cfg)
    trainer, _ = step_lib.make_trainer(cfg, mesh)
    with jax.set_mesh(mesh):
        state = step_lib.init_state(cfg, trainer, jax.device_put(params, trainer.state_shardings["params"]))
        mngr = checkpoint.manager(run_dir, keep=cfg.train.keep_checkpoints)
        tokenizer = tok.load(local / tokenizer_name)
        checkpoint.save(mngr, 0, state, cfg, tokenizer, {"provenance": provenance.of_import(hf_dir, tokenizer.path)})
        mngr.wait_until_finished()
        mngr.close()
    storage.write_bytes(run_dir / "config.json", cfg.to_json().encode())
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
        out = export(args.run_dir, pathlib.Path(args.out), args.step)
        print(
            f"wrote {out}/config.json, model.safetensors, the tokenizer and the model card (README.md): "
            f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it"
        )
    else:
        run_dir = import_(pathlib.Path(args.hf_dir), args.run_dir)
        print(f"wrote a step-0 checkpoint to {run_dir}: python -m jaxllm.generate --run_dir={run_dir} --prompt=...")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
