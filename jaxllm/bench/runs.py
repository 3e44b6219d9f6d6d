"""The measurements behind `python -m jaxllm.bench` (see jaxllm.bench.__main__ for the commands).

`bench_train` times training steps after warm-up in interleaved rounds (each implementation's median over rounds):
jaxllm with the kernels and dtype that `auto` chooses on this machine, the other dtype, and the reference kernels;
transformers in eager float32 and bf16 autocast. Then the compile time of the train step against depth.
`bench_generate` times whole greedy generations (prefill and decoding against a KV cache) at batch 1 and 8.
`speedrun` trains experiments/shakespeare_char.py in a fresh process and times each evaluation from process start.
Models are randomly initialised (speed does not depend on the values). torch and transformers come from the dev
extra and are imported in the functions that use them only: the runtime never needs them.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
from flax import nnx

from jaxllm import kernels, sharding
from jaxllm.config import Config, ConfigError, replace
from jaxllm.inference.generate import SamplingConfig, generate_tokens
from jaxllm.interop.hf import hf_config
from jaxllm.kernels import probe
from jaxllm.model.accounting import flops_per_token
from jaxllm.model.transformer import Transformer
from jaxllm.train import step as step_lib

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
    import torch  # noqa: PLC0415 (the dev extra: never imported by the runtime)

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
    with nnx.use_eager_sharding(False):
        graphdef, params = nnx.split(Transformer(cfg.model, nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(8, cfg.model.vocab_size, prompt_len).tolist() for _ in range(batch)]
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
    return lambda: list(generate_tokens(graphdef, params, cfg.model, prompts, sampling, stop_ids=()))


# ---------------------------------------------------------------------------------------------------------------
# transformers side


def _hf_model(cfg: Config):
    import torch  # noqa: PLC0415 (the dev extra: never imported by the runtime)
    import transformers  # noqa: PLC0415 (the dev extra: never imported by the runtime)

    torch.manual_seed(0)
    hf_cfg = transformers.AutoConfig.for_model(**hf_config(cfg.model))
    return transformers.AutoModelForCausalLM.from_config(hf_cfg)


def _autocast(dtype_name: str):
    import torch  # noqa: PLC0415 (the dev extra: never imported by the runtime)

    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype_name == "bfloat16" else contextlib.nullcontext()


def _hf_train_step(cfg: Config, dtype_name: str):
    import torch  # noqa: PLC0415 (the dev extra: never imported by the runtime)
    import torch.nn.functional as F  # noqa: PLC0415 (the dev extra: never imported by the runtime)

    model = _hf_model(cfg).train()
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
    )
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
    import torch  # noqa: PLC0415 (the dev extra: never imported by the runtime)

    model = _hf_model(cfg).eval()
    inputs = torch.randint(8, cfg.model.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad(), _autocast(dtype_name):
            model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

    return run


# ---------------------------------------------------------------------------------------------------------------
# Commands


def setup_torch(compare: str):
    if compare not in ("", "hf"):
        raise ConfigError(f"--compare={compare!r}: use --compare=hf, or leave it out for jaxllm alone")
    if not compare:
        return
    try:
        import torch  # noqa: PLC0415 (the dev extra: never imported by the runtime)
        import transformers  # noqa: F401, PLC0415 (the dev extra: is it installed?)
    except ImportError:
        raise ConfigError("--compare=hf needs torch and transformers: pip install -e '.[dev]'") from None
    torch.set_num_threads(os.cpu_count() or 1)  # the same cores XLA uses


def _describe(cfg: Config) -> dict:
    m = cfg.model
    return {
        "family": m.family,
        "n_layer": m.n_layer,
        "n_embd": m.n_embd,
        "n_head": m.n_head,
        "n_kv_head": m.kv_heads,
        "vocab_size": m.vocab_size,
        "block_size": m.block_size,
        "batch_size": cfg.train.batch_size,
    }


def variants(cfg: Config) -> tuple[kernels.Choice, list[tuple[str, str]]]:
    """The choice `auto` makes here, and the (kernels, dtype) pairs to time: that choice first, then the same kernels
    in the other dtype, then the reference kernels in the chosen dtype (what the fast kernels gain)."""
    choice = kernels.choose(replace(cfg.model, kernels="auto", compute_dtype="auto"))
    other = "float32" if choice.compute_dtype == "bfloat16" else "bfloat16"
    pairs = [(choice.kernels, choice.compute_dtype), (choice.kernels, other)]
    if choice.kernels != "reference":
        pairs.append(("reference", choice.compute_dtype))
    return choice, pairs


def _with(cfg: Config, kernel_set: str, dtype: str, **model) -> Config:
    return replace(cfg, model=replace(cfg.model, kernels=kernel_set, compute_dtype=dtype, **model))


def _jaxllm_row(kernel_set: str, dtype: str, choice: kernels.Choice) -> dict:
    chosen = (kernel_set, dtype) == (choice.kernels, choice.compute_dtype)
    return {"impl": "jaxllm", "kernels": kernel_set, "dtype": dtype, "auto": chosen}


def _hf_row(dtype: str) -> dict:
    return {
        "impl": "transformers",
        "kernels": "torch",
        "dtype": dtype + (" autocast" if dtype == "bfloat16" else " eager"),
        "auto": False,
    }


def _interleaved(runners: list, steps: int, warmup: int, rounds: int) -> list[list[float]]:
    """Seconds per call, [round][runner]. Rounds interleave the implementations and each reports its median: a
    machine's speed drifts between minutes, and one block of steps per implementation would turn the drift into
    the ratios."""
    return [[_timed(run, steps, warmup if r == 0 else 0) for _, run in runners] for r in range(rounds)]


def bench_train(cfg: Config, compare: str, steps: int, warmup: int, rounds: int) -> dict:
    choice, pairs = variants(cfg)
    peaks = {
        dt: {"jax": probe.measure_peak(dt, 1024), **({"torch": _torch_peak(dt)} if compare else {})}
        for dt in probe.DTYPES
    }
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    flops = flops_per_token(cfg.model)
    runners = [(_jaxllm_row(k, dt, choice), _jax_train_step(_with(cfg, k, dt))[0]) for k, dt in pairs]
    if compare:
        runners += [(_hf_row(dt), _hf_train_step(cfg, dt)) for dt in probe.DTYPES]
    times = _interleaved(runners, steps, warmup, rounds)
    rows = [
        {**row, "s_per_step": float(np.median([t[i] for t in times])), "rounds": [t[i] for t in times]}
        for i, (row, _) in enumerate(runners)
    ]
    reference = next((r for r in rows if r["impl"] == "transformers" and r["dtype"].startswith("float32")), rows[0])
    for r in rows:
        r["tokens_per_s"] = tokens_per_step / r["s_per_step"]
        r["ratio"] = r["tokens_per_s"] / (tokens_per_step / reference["s_per_step"])
        r["mfu"] = r["tokens_per_s"] * flops / max(peaks[r["dtype"].split()[0]].values())
    compile_rows = []
    for depth in DEPTHS:  # scanned, the default: unrolled layers compile in time growing with depth
        c = _with(cfg, choice.kernels, choice.compute_dtype, n_layer=depth)
        compile_rows.append({"n_layer": depth, "scan_layers": c.model.scan_layers, "compile_s": _jax_train_step(c)[1]})
    return {
        "model": _describe(cfg),
        "choice": choice.why,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "flops_per_token": flops,
        "peak_flops": peaks,
        "rows": rows,
        "compile": compile_rows,
    }


def bench_generate(cfg: Config, compare: str, new_tokens: int, warmup: int, rounds: int) -> dict:
    choice, pairs = variants(cfg)
    prompt_len = 16
    new_tokens = min(new_tokens, cfg.model.block_size - prompt_len)
    rows = []
    for batch in (1, 8):
        runners = [
            (_jaxllm_row(k, dt, choice), _jax_decoder(_with(cfg, k, dt), batch, prompt_len, new_tokens))
            for k, dt in pairs
        ]
        if compare:
            runners += [(_hf_row(dt), _hf_decoder(cfg, dt, batch, prompt_len, new_tokens)) for dt in probe.DTYPES]
        times = _interleaved(runners, 1, warmup, rounds)
        rows += [
            {**row, "batch": batch, "seconds": float(np.median([t[i] for t in times])), "rounds": [t[i] for t in times]}
            for i, (row, _) in enumerate(runners)
        ]
    for r in rows:
        r["tokens_per_s"] = r["batch"] * new_tokens / r["seconds"]
        r["ms_per_step"] = 1000 * r["seconds"] / new_tokens
        reference = next(
            (
                x
                for x in rows
                if x["batch"] == r["batch"] and x["impl"] == "transformers" and x["dtype"].startswith("float32")
            ),
            None,
        )
        r["ratio"] = r["tokens_per_s"] / (r["batch"] * new_tokens / reference["seconds"]) if reference else 1.0
    return {
        "model": _describe(cfg),
        "choice": choice.why,
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "rows": rows,
    }


SPEEDRUN_EXPERIMENT = "shakespeare_char"
_EVAL_LINE = re.compile(r"eval step (\d+): val_loss ([0-9.]+)")


def speedrun(data: pathlib.Path, target: float, run_dir: pathlib.Path) -> dict:
    """Trains the Shakespeare experiment in a fresh process (cold start: imports, data preparation, compilation, with
    no compiled programs from disk) and times each evaluation from the moment the process was started."""
    if not data.is_file():
        raise ConfigError(f"--data={data}: no such file; pass a copy of Tiny Shakespeare (input.txt of nanoGPT)")
    shutil.rmtree(run_dir, ignore_errors=True)  # a cold start: data preparation counts too
    command = [
        sys.executable,
        "-m",
        "jaxllm.train",
        f"--experiment={SPEEDRUN_EXPERIMENT}",
        f'--data.sources=["file:{data}"]',
        f"--data.cache_dir={run_dir / 'prepared'}",
        f"--run_dir={run_dir}",
    ]
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
    return {
        "command": " ".join(command),
        "target": target,
        "evals": evals,
        "total_s": total,
        "reached": reached,
        "reference": "nanoGPT's CPU baby GPT recipe reaches val loss 1.886 (time it on the same machine)",
    }
