"""Benchmarks: jaxllm against Hugging Face transformers on the same model and machine, and the Shakespeare speedrun.

  python -m jaxllm.bench train --compare=hf [--experiment=base --model.*=...] [--steps=5] [--rounds=3] [--out=F.json]
  python -m jaxllm.bench generate --compare=hf [--experiment=base ...] [--new_tokens=64] [--rounds=3] [--out=F.json]
  python -m jaxllm.bench speedrun --data=PATH/tinyshakespeare.txt [--target=1.88]

`train` times training steps after warm-up (jaxllm: float32 and bfloat16 compute; transformers: eager float32 and
bfloat16 autocast) in interleaved rounds, each implementation's median over rounds, measures the matmul peak of
each dtype (the better of JAX and PyTorch), and prints tokens/s, the ratio to transformers in float32, and MFU;
then the compile time of the jaxllm train step against depth (2, 12, 24 layers, with the configured scan setting).
`generate` times whole greedy generations (prefill and decoding against a KV cache) at batch 1 and 8, in the same
interleaved rounds. `speedrun` runs experiments/shakespeare_char.py in a fresh process and reports the wall time
from process start to the first evaluation at or below the target loss. Each writes its results as JSON.

Models are randomly initialised (speed does not depend on the values). torch and transformers come from
requirements-dev.txt: they are imported here only, never by the runtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

from jaxllm.cli import run_main
from jaxllm.config import Config, ConfigError, parse_cli

FLAGS = ("compare", "steps", "warmup", "rounds", "out", "new_tokens", "data", "target")
DEPTHS = (2, 12, 24)


def _timed(fn, steps: int, warmup: int) -> float:
    """Seconds per call of fn() after `warmup` calls (fn must block until its work is done)."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def _torch_peak(dtype_name: str, n: int = 1024, repeats: int = 8) -> float:
    import torch

    a = torch.ones((n, n), dtype=getattr(torch, dtype_name))

    def chain():
        x = a
        for _ in range(repeats):
            x = (x @ a) * 1e-3
        return x

    return 2 * n**3 * repeats / min(_timed(chain, 1, 1) for _ in range(3))


# ---------------------------------------------------------------------------------------------------------------
# jaxllm side


def _jax_train_step(cfg: Config):
    """A callable running one blocking training step on random tokens, and the compile time it took."""
    import jax
    import numpy as np

    from jaxllm import sharding, step as step_lib

    mesh = sharding.make_mesh(cfg)
    trainer, abstract_state = step_lib.make_trainer(cfg, mesh)
    shape = (cfg.train.batch_size, cfg.model.block_size + 1)
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, shape, dtype=np.int32)
    batch = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        state = step_lib.init_state(cfg, trainer)
        t0 = time.perf_counter()
        compiled = trainer.jit_train_step().lower(abstract_state, batch).compile()
        compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run_step():
        holder["state"], metrics = compiled(holder["state"], batch)
        metrics["loss"].block_until_ready()

    return run_step, compile_s


def _jax_decoder(cfg: Config, batch: int, prompt_len: int, new_tokens: int):
    import numpy as np
    from flax import nnx

    from jaxllm.generate import SamplingConfig, generate_tokens
    from jaxllm.model import Transformer

    with nnx.use_eager_sharding(False):
        graphdef, params = nnx.split(Transformer(cfg.model, nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(8, cfg.model.vocab_size, prompt_len).tolist() for _ in range(batch)]
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
    return lambda: list(generate_tokens(graphdef, params, cfg.model, prompts, sampling, stop_ids=()))


# ---------------------------------------------------------------------------------------------------------------
# transformers side


def _hf_model(cfg: Config):
    import torch
    import transformers

    from jaxllm.hf import hf_config

    torch.manual_seed(0)
    hf_cfg = transformers.AutoConfig.for_model(**hf_config(cfg.model))
    return transformers.AutoModelForCausalLM.from_config(hf_cfg)


def _autocast(dtype_name: str):
    import torch

    return (torch.autocast("cpu", dtype=torch.bfloat16) if dtype_name == "bfloat16" else contextlib.nullcontext())


def _hf_train_step(cfg: Config, dtype_name: str):
    import torch
    import torch.nn.functional as F

    model = _hf_model(cfg).train()
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                  weight_decay=o.weight_decay)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.block_size + 1), generator=g)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def run_step():
        with _autocast(dtype_name):
            logits = model(inputs).logits  # (B,T,V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())  # float32 loss, as jaxllm
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run_step


def _hf_decoder(cfg: Config, dtype_name: str, batch: int, prompt_len: int, new_tokens: int):
    import torch

    model = _hf_model(cfg).eval()
    inputs = torch.randint(8, cfg.model.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad(), _autocast(dtype_name):
            model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    return run


# ---------------------------------------------------------------------------------------------------------------
# Commands


def _setup_torch(compare: str):
    if compare not in ("", "hf"):
        raise ConfigError(f"--compare={compare!r}: use --compare=hf, or leave it out for jaxllm alone")
    if not compare:
        return
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise ConfigError("--compare=hf needs torch and transformers: pip install -r requirements-dev.txt") from None
    import os

    torch.set_num_threads(os.cpu_count() or 1)  # the same cores XLA uses


def _describe(cfg: Config) -> dict:
    m = cfg.model
    return {"family": m.family, "n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head,
            "n_kv_head": m.kv_heads, "vocab_size": m.vocab_size, "block_size": m.block_size,
            "batch_size": cfg.train.batch_size}


def bench_train(cfg: Config, compare: str, steps: int, warmup: int, rounds: int) -> dict:
    import numpy as np

    from jaxllm.perf import peak_flops
    from jaxllm.scaling import flops_per_token

    peaks = {}
    for dt in ("float32", "bfloat16"):
        peaks[dt] = {"jax": peak_flops(dt), **({"torch": _torch_peak(dt)} if compare else {})}
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    flops = flops_per_token(cfg.model)
    runners = []  # (row, one blocking step)
    for dt in ("float32", "bfloat16"):
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compute_dtype=dt))
        runners.append(({"impl": "jaxllm", "dtype": dt}, _jax_train_step(c)[0]))
    if compare:
        for dt in ("float32", "bfloat16"):
            runners.append(({"impl": "transformers", "dtype": dt + (" autocast" if dt == "bfloat16" else " eager")},
                            _hf_train_step(cfg, dt)))
    # Rounds interleave the implementations and each reports its median: this machine's speed drifts by 10% or
    # more between minutes, and one block of steps per implementation turned that drift into the ratios.
    times = [[_timed(run, steps, warmup if r == 0 else 0) for _, run in runners] for r in range(rounds)]
    rows = [{**row, "s_per_step": float(np.median([t[i] for t in times])), "rounds": [t[i] for t in times]}
            for i, (row, _) in enumerate(runners)]
    reference = next((r for r in rows if r["impl"] == "transformers" and r["dtype"].startswith("float32")), rows[0])
    for r in rows:
        r["tokens_per_s"] = tokens_per_step / r["s_per_step"]
        r["ratio"] = r["tokens_per_s"] / (tokens_per_step / reference["s_per_step"])
        r["mfu"] = r["tokens_per_s"] * flops / max(peaks[r["dtype"].split()[0]].values())
    compile_rows = []
    for depth in DEPTHS:  # scanned, the default: unrolled layers compile in time growing with depth
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layer=depth))
        compile_rows.append({"n_layer": depth, "scan_layers": c.model.scan_layers, "compile_s": _jax_train_step(c)[1]})
    return {"model": _describe(cfg), "steps": steps, "warmup": warmup, "rounds": rounds, "flops_per_token": flops,
            "peak_flops": peaks, "rows": rows, "compile": compile_rows}


def bench_generate(cfg: Config, compare: str, new_tokens: int, warmup: int, rounds: int) -> dict:
    import numpy as np

    prompt_len = 16
    new_tokens = min(new_tokens, cfg.model.block_size - prompt_len)
    rows = []
    for batch in (1, 8):
        runners = []  # (row, one blocking generation)
        for dt in ("float32", "bfloat16"):
            c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compute_dtype=dt))
            runners.append(({"impl": "jaxllm", "dtype": dt}, _jax_decoder(c, batch, prompt_len, new_tokens)))
        if compare:
            for dt in ("float32", "bfloat16"):
                runners.append(({"impl": "transformers", "dtype": dt + (" autocast" if dt == "bfloat16" else " eager")},
                                _hf_decoder(cfg, dt, batch, prompt_len, new_tokens)))
        times = [[_timed(run, 1, warmup if r == 0 else 0) for _, run in runners] for r in range(rounds)]  # see train
        rows += [{**row, "batch": batch, "seconds": float(np.median([t[i] for t in times])),
                  "rounds": [t[i] for t in times]} for i, (row, _) in enumerate(runners)]
    for r in rows:
        r["tokens_per_s"] = r["batch"] * new_tokens / r["seconds"]
        r["ms_per_step"] = 1000 * r["seconds"] / new_tokens
        reference = next((x for x in rows if x["batch"] == r["batch"] and x["impl"] == "transformers"
                          and x["dtype"].startswith("float32")), None)
        r["ratio"] = r["tokens_per_s"] / (r["batch"] * new_tokens / reference["seconds"]) if reference else 1.0
    return {"model": _describe(cfg), "prompt_tokens": prompt_len, "new_tokens": new_tokens, "rounds": rounds,
            "rows": rows}


SPEEDRUN_EXPERIMENT = "shakespeare_char"
_EVAL_LINE = re.compile(r"eval step (\d+): val_loss ([0-9.]+)")


def speedrun(data: pathlib.Path, target: float, run_dir: pathlib.Path) -> dict:
    """Trains the Shakespeare experiment in a fresh process (cold start: imports, data preparation, compilation, with
    no compiled programs from disk) and times each evaluation from the moment the process was started."""
    if not data.is_file():
        raise ConfigError(f"--data={data}: no such file; pass a copy of Tiny Shakespeare (input.txt of nanoGPT)")
    shutil.rmtree(run_dir, ignore_errors=True)  # a cold start: data preparation counts too
    command = [sys.executable, "-m", "jaxllm.train", f"--experiment={SPEEDRUN_EXPERIMENT}",
               f"--data.sources=[\"file:{data}\"]", f"--data.cache_dir={run_dir / 'prepared'}",
               f"--run_dir={run_dir}"]
    evals = []
    t0 = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            match = _EVAL_LINE.search(line)
            if match:
                evals.append({"step": int(match[1]), "val_loss": float(match[2]), "wall_s": time.perf_counter() - t0})
                print(f"  {evals[-1]['wall_s']:6.1f}s  step {match[1]}  val_loss {match[2]}", flush=True)
    total = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed with status {proc.returncode}")
    reached = next((e for e in evals if e["val_loss"] <= target), None)
    return {"command": " ".join(command), "target": target, "evals": evals, "total_s": total,
            "reached": reached, "reference": "nanoGPT CPU baby GPT: val loss 1.886 in 64-66 s on this machine"}


def print_train(result: dict) -> None:
    print(f"model: {result['model']}")
    print("matmul peak (GFLOP/s): " + ", ".join(
        f"{dt} " + " / ".join(f"{k} {v / 1e9:,.0f}" for k, v in p.items()) for dt, p in result["peak_flops"].items()))
    print(f"\n| impl | compute | tokens/s | ratio to transformers f32 | MFU |\n|---|---|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['impl']} | {r['dtype']} | {r['tokens_per_s']:,.0f} | {r['ratio']:.2f} | {100 * r['mfu']:.1f}% |")
    print("\n| layers | scanned | compile (s) |\n|---:|---|---:|")
    for r in result["compile"]:
        print(f"| {r['n_layer']} | {'yes' if r['scan_layers'] else 'no'} | {r['compile_s']:.1f} |")


def print_generate(result: dict) -> None:
    print(f"model: {result['model']}; {result['prompt_tokens']} prompt tokens, {result['new_tokens']} new (greedy)")
    print("\n| impl | compute | batch | tokens/s | ms/step | ratio to transformers f32 |\n|---|---|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['impl']} | {r['dtype']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['ms_per_step']:.1f} | "
              f"{r['ratio']:.2f} |")


def main(argv: list[str]) -> int:
    # timed compilations compile: no programs loaded from disk (jaxllm/__init__.py), here or in the speedrun's process
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    if not argv or argv[0] not in ("train", "generate", "speedrun"):
        raise ConfigError("usage: python -m jaxllm.bench {train,generate,speedrun} [--compare=hf] [--key=value ...]")
    command, argv = argv[0], argv[1:]
    cfg, flags = parse_cli(argv, allowed_flags=FLAGS)
    out = pathlib.Path(flags.get("out") or f"runs/bench/{command}.json")
    if command == "speedrun":
        data = pathlib.Path(flags.get("data", "../shared/data/tinyshakespeare.txt"))
        result = speedrun(data, float(flags.get("target", 1.88)), out.parent / "speedrun_run")
        reached = result["reached"]
        print(f"\ncommand: {result['command']}")
        print(f"val_loss {reached['val_loss']:.4f} <= {result['target']} at step {reached['step']}, "
              f"{reached['wall_s']:.1f}s from process start ({result['reference']})" if reached else
              f"target {result['target']} not reached; best {min(e['val_loss'] for e in result['evals']):.4f}")
    else:
        compare = flags.get("compare", "")
        _setup_torch(compare)
        warmup, steps = int(flags.get("warmup", 2)), int(flags.get("steps", 5))
        if command == "train":
            result = bench_train(cfg, compare, steps, warmup, int(flags.get("rounds", 3)))
            print_train(result)
        else:
            result = bench_generate(cfg, compare, int(flags.get("new_tokens", 64)), max(warmup, 1),
                                    int(flags.get("rounds", 3)))
            print_generate(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
