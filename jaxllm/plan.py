"""`python -m jaxllm.plan`: compute-optimal parameters and tokens for a budget, by each published method, side by side.

    python -m jaxllm.plan --flops=1e21
    python -m jaxllm.plan --hours=24 --chips=256 --peak_tflops=459 --mfu=0.5   # time -> FLOPs first
    python -m jaxllm.plan --flops=3e14 --experiment=base                        # plus a concrete model of its family
    python -m jaxllm.plan --flops=1e21 --tokens_per_s=2e6 --json
    python -m jaxllm.plan --budget=10m                                          # measured here: what 10 min buys

Steps are counted at the experiment's tokens per step (train.batch_size x model.block_size; `--experiment`
defaults to base, and `--train.batch_size=...` style overrides apply). Wall time needs a throughput: FLOP/s from
--chips x --peak_tflops x --mfu, or tokens/s from --tokens_per_s. Not for: measuring a scaling law (that is
`python -m jaxllm.scaling`).

--budget=10m (or 90s, 2h) is different: it measures this machine and plans the experiment's run exactly as
`python -m jaxllm.train --experiment=base --train.budget=10m` would (jaxllm.train.budget), by the law fitted for
the experiment's setup, and prints that plan without training.
"""

from __future__ import annotations

import json
import math
import sys

from jaxllm.cli import run_main
from jaxllm.config import Config, ConfigError, parse_cli, parse_duration, replace, validate
from jaxllm.model.accounting import flops_per_token, param_count
from jaxllm.scaling.laws import MIN_LAYERS, PLANNERS, human, positive_number, size_model, smallest_model

FLAGS = ("flops", "hours", "chips", "peak_tflops", "mfu", "tokens_per_s", "budget")
SWITCHES = ("json",)
DEFAULT_MFU = 0.4  # a typical well-tuned large run; say --mfu to use your own


def budget(flags: dict[str, str]) -> tuple[float, float | None, float | None, str]:
    """Returns (FLOPs, FLOP/s or None, tokens/s or None, a line saying where the budget came from)."""
    if ("flops" in flags) == ("hours" in flags):
        raise ConfigError("give exactly one budget: --flops=1e21, or --hours=24 with --peak_tflops=... to convert")
    if "peak_tflops" not in flags:
        for flag in ("chips", "mfu", "hours"):
            if flag in flags:
                raise ConfigError(f"--{flag} needs --peak_tflops (per chip) to turn chips and time into FLOPs")
    if "tokens_per_s" in flags and "peak_tflops" in flags:
        raise ConfigError("--tokens_per_s and --peak_tflops both give a throughput: keep one")
    tokens_per_s = positive_number("tokens_per_s", flags["tokens_per_s"], "2e6") if "tokens_per_s" in flags else None
    flop_per_s = None
    if "peak_tflops" in flags:
        chips = positive_number("chips", flags.get("chips", "1"), "256")
        mfu = positive_number("mfu", flags.get("mfu", str(DEFAULT_MFU)), "0.5")
        if not chips.is_integer():
            raise ConfigError(f"--chips={flags['chips']}: expected a whole number of chips")
        if mfu > 1:
            raise ConfigError(f"--mfu={flags['mfu']}: model FLOP utilisation is a fraction in (0, 1], e.g. 0.4")
        peak = positive_number("peak_tflops", flags["peak_tflops"], "459")
        flop_per_s = chips * peak * 1e12 * mfu
        rate = f"{chips:.0f} chips x {peak:g} TFLOP/s x MFU {mfu:g} = {flop_per_s:.3g} FLOP/s"
    if "flops" in flags:
        flops = positive_number("flops", flags["flops"], "1e21")
        return flops, flop_per_s, tokens_per_s, f"budget {flops:.3g} FLOPs" + (f" at {rate}" if flop_per_s else "")
    hours = positive_number("hours", flags["hours"], "24")
    flops = hours * 3600 * flop_per_s
    return flops, flop_per_s, tokens_per_s, f"budget {hours:g} h x {rate} = {flops:.3g} FLOPs"


def sized_model(cfg: Config, planner, flops: float) -> dict:
    """The experiment's family shape nearest the planned N, with the steps that spend the budget on it."""
    plan = planner(flops)
    model = size_model(cfg.model, plan.n_params)
    n_params = param_count(model).total
    if n_params > 2 * plan.n_params:
        smallest = param_count(smallest_model(cfg.model)).total
        growth = math.log2(planner(2 * flops).n_params / plan.n_params)  # every method plans N ∝ C^growth
        raise ConfigError(
            f"{flops:.3g} FLOPs plans {human(plan.n_params)} parameters ({plan.method}) but the smallest "
            f"{cfg.name} model ({MIN_LAYERS} layers, width {smallest_model(cfg.model).n_embd}) has {human(smallest)}: "
            f"raise the budget to at least {flops * (smallest / plan.n_params) ** (1 / growth):.2g} FLOPs"
        )
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    steps = max(1, round(flops / (flops_per_token(model) * tokens_per_step)))  # exact FLOPs, attention included
    overrides = [f"--model.n_layer={model.n_layer}", f"--model.n_embd={model.n_embd}", f"--model.n_head={model.n_head}"]
    overrides += [f"--model.n_kv_head={model.n_kv_head}"] if model.n_kv_head else []
    overrides += [f"--model.mlp_hidden={model.mlp_hidden}"] if model.mlp_hidden else []
    return {
        "n_layer": model.n_layer,
        "n_embd": model.n_embd,
        "n_head": model.n_head,
        "n_kv_head": model.kv_heads,
        "mlp_hidden": model.hidden,
        "params": n_params,
        "non_embedding_params": param_count(model).non_embedding,
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "overrides": " ".join(overrides + [f"--train.steps={steps}"]),
    }


def wall_time(seconds: float) -> str:
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def report(flags: dict[str, str], cfg: Config, sized: bool) -> dict:
    flops, flop_per_s, tokens_per_s, origin = budget(flags)
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    rows = []
    for planner in PLANNERS:
        plan = planner(flops)
        wall_s = flops / flop_per_s if flop_per_s else plan.n_tokens / tokens_per_s if tokens_per_s else None
        row = {
            "method": plan.method,
            "source": plan.source,
            "params": plan.n_params,
            "tokens": plan.n_tokens,
            "tokens_per_param": plan.n_tokens / plan.n_params,
            "loss": plan.loss,
            "steps": math.ceil(plan.n_tokens / tokens_per_step),
            "wall_s": wall_s,
        }
        if sized:
            row["model"] = sized_model(cfg, planner, flops)
        rows.append(row)
    return {
        "flops": flops,
        "budget": origin,
        "flop_per_s": flop_per_s,
        "tokens_per_s": tokens_per_s,
        "experiment": cfg.name,
        "family": cfg.model.family,
        "tokens_per_step": tokens_per_step,
        "methods": rows,
    }


def print_table(result: dict) -> None:
    print(result["budget"])
    print(
        f"steps at {result['tokens_per_step']:,} tokens per step (experiment {result['experiment']}); "
        "loss in nats per token on the method's own data (MassiveText), not ours"
    )
    print(
        f"{'method':<14} {'params N':>9} {'tokens D':>9} {'D/N':>6} {'loss':>6} {'steps':>8} {'wall time':>10}  source"
    )
    for row in result["methods"]:
        loss = f"{row['loss']:.3f}" if row["loss"] is not None else "-"
        wall = wall_time(row["wall_s"]) if row["wall_s"] is not None else "-"
        print(
            f"{row['method']:<14} {human(row['params']):>9} {human(row['tokens']):>9} "
            f"{row['tokens_per_param']:>6.1f} {loss:>6} {human(row['steps']):>8} {wall:>10}  {row['source']}"
        )
    for row in result["methods"]:
        if "model" in row:
            model = row["model"]
            layers = f"{model['n_layer']} layer" + ("s" if model["n_layer"] > 1 else "")
            print(
                f"\n{row['method']}: {result['family']}, {layers} x {model['n_embd']} wide, "
                f"{model['n_head']} heads ({model['n_kv_head']} kv), {human(model['params'])} params "
                f"({human(model['non_embedding_params'])} non-embedding), {human(model['steps'])} steps, "
                f"{human(model['tokens'])} tokens\n  python -m jaxllm.train --experiment={result['experiment']} "
                f"{model['overrides']}"
            )


def main(argv: list[str]) -> int:
    cfg, flags = parse_cli(argv, allowed_flags=FLAGS, switches=SWITCHES)
    as_json = flags.get("json", "false").lower() in ("1", "true", "yes", "on")
    if "budget" in flags:
        others = [f"--{f}" for f in FLAGS if f in flags and f != "budget"]
        if others:
            raise ConfigError(f"--budget plans with this machine's measured speed: drop {', '.join(others)}")
        parse_duration(flags["budget"], "--budget")
        cfg = validate(replace(cfg, train=replace(cfg.train, budget=flags["budget"], budget_flops=0.0)))
        from jaxllm.train.budget import plan_here  # noqa: PLC0415 (JAX and a measurement: --budget only)

        result = plan_here(cfg, (lambda *a, **k: None) if as_json else print)
        if as_json:
            print(json.dumps(result, indent=2))
        else:
            name = flags.get("experiment", "base")
            print(f"train it: python -m jaxllm.train --experiment={name} --train.budget={flags['budget']}")
        return 0
    result = report(flags, cfg, sized="experiment" in flags)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
