"""`python -m jaxllm.scaling`: an IsoFLOP sweep on this machine, then fits and plots (Hoffmann et al. 2022, Approaches
2 and 3, at toy scale).

    python -m jaxllm.scaling                                                     # the default sweep
    python -m jaxllm.scaling --experiment=base --budgets=1e14,3e14,1e15 --sizes=5
    python -m jaxllm.scaling --dry_run                                           # the grid only, nothing trained
    python -m jaxllm.scaling --part=1/2   # and --part=2/2 elsewhere, on a shared OUT: the grid in two parts

The experiment defaults to `scaling` (experiments/scaling.py: a 512-token vocabulary, 128-token context, 8
sequences a step), sized so that CPU budgets of 2e11-2e12 FLOPs give every model hundreds to thousands of steps and
the IsoFLOP profiles have their minima inside the grid; see that file for the pilot figures.

For each budget C (FLOPs), `--sizes` models of the experiment's family are spread log-evenly over `--span` times
either side of the rule-of-20 size (moved up to start at the family's smallest model when it would fall below it;
models that would get fewer than MIN_STEPS steps are left out); each trains for C / (FLOPs per token) tokens with
the real training code, and its final validation loss is recorded. Writes OUT/scaling.json, OUT/isoflop.png,
OUT/optimal.png and OUT/law.json, the law a budgeted run of the same setup plans with (also kept in
jaxllm.machine.cache_dir()/laws/<setup key>.json, where jaxllm.scaling.budget.find_law looks). A run whose result is
already in OUT is reused, so an interrupted sweep picks up where it stopped, and parts run apart fit together.
Not for: planning a single run (`python -m jaxllm.plan`).

N is the total parameter count, embeddings included (Hoffmann et al.; Kaplan et al. 2020 leave them out), the
same N as the planners in jaxllm.scaling.laws, so a fitted law can be compared with theirs. At this scale the
embeddings are a large share of the small models (62% of the 1-layer, width-32 model of experiments/scaling.py,
12% of its 4-layer, width-96 one), so the choice moves the fitted exponents (Pearce & Song 2024): scaling.json
also holds the same fits with N the non-embedding count, as `fits_non_embedding`. D is the tokens
trained on, C the exact FLOPs of jaxllm.model.accounting.flops_per_token (attention included), not 6·N·D.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import time
from dataclasses import dataclass

import numpy as np
from matplotlib.ticker import FuncFormatter

from jaxllm import machine
from jaxllm.config import Config, ConfigError, parse_cli
from jaxllm.model.accounting import flops_per_token, param_count
from jaxllm.plots import plt, save_figure
from jaxllm.scaling.budget import capped_warmup, setup_key
from jaxllm.scaling.fit import (
    bootstrap_isoflop,
    bootstrap_loss_law,
    fit_loss_law,
    isoflop_minimum,
    law_exponents,
    power_law,
)
from jaxllm.scaling.laws import (
    BESIROGLU_2024,
    HOFFMANN_2022,
    human,
    positive_number,
    rule_of_20,
    size_model,
    smallest_model,
)
from jaxllm.train.loop import run as train_run

FLAGS = ("budgets", "sizes", "span", "out", "part")
SWITCHES = ("dry_run",)
DEFAULT_EXPERIMENT = "scaling"
# 20 runs of experiments/scaling.py over 35x of compute, 4.9e13 FLOPs in all. The sweep prints its own rate and
# time left as it goes (--dry_run lists the grid first).
DEFAULT_BUDGETS = "2e11,6e11,2e12,7e12"
DEFAULT_SIZES = 5
DEFAULT_SPAN = 4.0
BOOTSTRAP_RESAMPLES = 200  # per fit: the 95% intervals of the exponents
MIN_STEPS = 30  # fewer steps than this and the cosine schedule, not the model size, decides the loss


@dataclass(frozen=True)
class Run:
    budget: float  # the nominal FLOP budget this run belongs to
    cfg: Config

    @property
    def tokens(self) -> int:
        return self.cfg.train.steps * self.cfg.train.batch_size * self.cfg.model.block_size

    @property
    def flops(self) -> float:  # what the run really spends: its steps are rounded
        return self.tokens * flops_per_token(self.cfg.model)

    @property
    def name(self) -> str:
        m = self.cfg.model
        digest = hashlib.sha256(self.cfg.to_json().encode()).hexdigest()[:8]  # any other change: another run
        return f"C{self.budget:.2e}_L{m.n_layer}_E{m.n_embd}_H{m.n_head}_{digest}"


def _steps_for(cfg: Config, model, budget: float) -> int:
    return round(budget / (flops_per_token(model) * cfg.train.batch_size * cfg.model.block_size))


def grid(cfg: Config, budgets: list[float], sizes: int, span: float) -> list[Run]:
    """The runs of the sweep, per budget from smallest model to largest. Raises ConfigError when a budget leaves
    fewer than 3 distinct models (a parabola needs 3)."""
    runs = []
    for budget in budgets:
        # Below the smallest model the grid moves up rather than collapsing onto it: at toy budgets the embedding
        # alone outweighs the rule-of-20 size.
        lowest = max(rule_of_20(budget).n_params / span, param_count(smallest_model(cfg.model)).total)
        models = []
        for target in lowest * np.geomspace(1, span**2, sizes):
            model = size_model(cfg.model, target)
            if _steps_for(cfg, model, budget) >= MIN_STEPS and model not in models:
                models.append(model)
        if len(models) < 3:
            smallest = smallest_model(cfg.model)
            need = MIN_STEPS * flops_per_token(smallest) * cfg.train.batch_size * cfg.model.block_size
            raise ConfigError(
                f"budget {budget:.3g} FLOPs leaves {len(models)} model sizes of {cfg.name} with at least {MIN_STEPS} "
                f"steps; a parabola needs 3: raise the budget (the smallest model alone needs {need:.2g}), "
                f"widen --span or add --sizes"
            )
        for model in models:
            steps = _steps_for(cfg, model, budget)
            optim = capped_warmup(cfg.optim, steps)
            train = dataclasses.replace(
                cfg.train, steps=steps, eval_every=steps, checkpoint_every=steps, budget="", budget_flops=0.0
            )
            runs.append(Run(budget, dataclasses.replace(cfg, model=model, optim=optim, train=train)))
    return runs


def execute(runs: list[Run], out: pathlib.Path, train) -> list[dict]:
    """Trains each run not already finished in out (train: jaxllm.train.run's signature); returns one record each."""
    done = {
        run.name: json.loads((out / run.name / "scaling_result.json").read_text())
        for run in runs
        if (out / run.name / "scaling_result.json").is_file()
    }
    todo_flops = sum(run.flops for run in runs if run.name not in done)
    print(f"{len(runs)} runs, {len(done)} already finished; {todo_flops:.3g} FLOPs of training to do")
    records, spent_flops, spent_s = [], 0.0, 0.0
    for i, run in enumerate(runs, 1):
        m = run.cfg.model
        label = (
            f"[{i}/{len(runs)}] C={run.budget:.2g} {m.n_layer}x{m.n_embd} ({human(param_count(m).total)} "
            f"params) {human(run.cfg.train.steps)} steps"
        )
        if run.name not in done:
            print(f"{label} ...", flush=True)
            t0 = time.perf_counter()
            result = train(run.cfg, out / run.name, progress=False)
            wall_s = time.perf_counter() - t0
            spent_flops, spent_s = spent_flops + run.flops, spent_s + wall_s
            done[run.name] = {
                "val_loss": result["val_loss"],
                "val_bpb": result["val_bpb"],
                "tokens_per_s": result["tokens_per_s"],
                "wall_s": wall_s,
            }
            (out / run.name).mkdir(exist_ok=True)
            tmp = out / run.name / "scaling_result.json.tmp"
            tmp.write_text(json.dumps(done[run.name], indent=2))
            tmp.replace(out / run.name / "scaling_result.json")
            left_s = (todo_flops - spent_flops) / (spent_flops / spent_s)
            print(
                f"  val_loss {result['val_loss']:.4f} in {wall_s:.0f} s "
                f"({spent_flops / spent_s / 1e9:.0f} GFLOP/s); about {left_s / 60:.0f} min left",
                flush=True,
            )
        else:
            print(f"{label}: val_loss {done[run.name]['val_loss']:.4f} (reused)")
        records.append(
            {
                "budget": run.budget,
                "n_layer": m.n_layer,
                "n_embd": m.n_embd,
                "n_head": m.n_head,
                "params": param_count(m).total,
                "non_embedding_params": param_count(m).non_embedding,
                "steps": run.cfg.train.steps,
                "tokens": run.tokens,
                "flops": run.flops,
                "run_dir": str(out / run.name),
                **done[run.name],
            }
        )
    return records


def fit(records: list[dict], n_key: str = "params", intervals: bool = True) -> dict:
    """IsoFLOP minima per budget, power laws N_opt ∝ C^a and D_opt ∝ C^b over the minima inside their sizes, and
    L(N, D) over all runs, with N the records' n_key ('params' or 'non_embedding_params').
    A fit the data cannot support is recorded with its reason instead of its numbers."""
    profiles = []
    for budget in sorted({r["budget"] for r in records}):
        at = [r for r in records if r["budget"] == budget]
        n, d, loss = (np.array([r[k] for r in at], dtype=float) for k in (n_key, "tokens", "val_loss"))
        try:
            log_n_opt, loss_min, coeffs = isoflop_minimum(np.log(n), loss)
            log_d_opt, _, _ = isoflop_minimum(np.log(d), loss)
        except ValueError as e:
            profiles.append({"budget": budget, "error": str(e)})
            continue
        profiles.append(
            {
                "budget": budget,
                "n_opt": math.exp(log_n_opt),
                "d_opt": math.exp(log_d_opt),
                "loss_min": loss_min,
                "parabola_ln_n": coeffs.tolist(),
                "inside_grid": bool(n.min() <= math.exp(log_n_opt) <= n.max()),
            }
        )
    result = {"isoflop": profiles}
    good = [p for p in profiles if "n_opt" in p and p["inside_grid"]]  # an extrapolated minimum is a guess
    if len(good) >= 2:
        c = np.array([p["budget"] for p in good])
        for key, name in (("n_opt", "params"), ("d_opt", "tokens")):
            exponent, coefficient = power_law(c, np.array([p[key] for p in good]))
            result[f"{name}_law"] = {"exponent": exponent, "coefficient": coefficient}
    else:
        result["params_law"] = result["tokens_law"] = {
            "error": f"{len(good)} budget(s) with a minimum inside their sizes; need 2"
        }
    runs = [np.array([r[k] for r in records], dtype=float) for k in (n_key, "tokens", "val_loss")]
    try:
        law = fit_loss_law(*runs)
        result["loss_law"] = law_exponents(law)
        if intervals:
            result["loss_law"]["interval_95"] = bootstrap_loss_law(*runs, law, BOOTSTRAP_RESAMPLES)
    except ValueError as e:
        result["loss_law"] = {"error": str(e)}
    if "exponent" in result["params_law"] and intervals:
        result["params_law"]["interval_95"] = bootstrap_isoflop(
            [
                (
                    b,
                    *(
                        np.array([r[k] for r in records if r["budget"] == b], dtype=float)
                        for k in (n_key, "tokens", "val_loss")
                    ),
                )
                for b in sorted({p["budget"] for p in good})
            ]
        )
    return result


def plot(records: list[dict], fits: dict, out: pathlib.Path) -> None:
    """isoflop.png: loss against N per budget, fitted parabolas and minima; optimal.png: N_opt and D_opt against C."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for profile, color in zip(fits["isoflop"], plt.cm.viridis(np.linspace(0, 0.85, len(fits["isoflop"])))):
        at = [r for r in records if r["budget"] == profile["budget"]]
        n = np.array([r["params"] for r in at])
        ax.plot(n, [r["val_loss"] for r in at], "o", color=color, label=f"C = {profile['budget']:.2g}")
        if "n_opt" in profile:
            x = np.linspace(np.log(n.min()), np.log(n.max()), 100)
            ax.plot(np.exp(x), np.polyval(profile["parabola_ln_n"], x), "-", color=color, lw=1)
            ax.plot(profile["n_opt"], profile["loss_min"], "*", color=color, ms=14, mec="black")
    ax.set(xscale="log", xlabel="parameters N", ylabel="final validation loss (nats/token)", title="IsoFLOP profiles")
    # minor ticks labelled 20K, 50K: matplotlib's default labels every minor tick and they overlap
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human(x)))
    ax.xaxis.set_minor_formatter(
        FuncFormatter(lambda x, _: human(x) if round(x / 10 ** math.floor(math.log10(x))) in (2, 5) else "")
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))  # outside: the profiles fill every corner
    save_figure(fig, out / "isoflop.png")

    good = [p for p in fits["isoflop"] if "n_opt" in p and p["inside_grid"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, law, label in (
        (axes[0], "n_opt", "params_law", "N_opt (parameters)"),
        (axes[1], "d_opt", "tokens_law", "D_opt (tokens)"),
    ):
        c = np.array([p["budget"] for p in good])
        ax.plot(c, [p[key] for p in good], "o", label="IsoFLOP minima")
        if "exponent" in fits[law]:
            line = np.geomspace(c.min() / 2, c.max() * 2, 50)
            ax.plot(
                line,
                fits[law]["coefficient"] * line ** fits[law]["exponent"],
                "-",
                label=f"fit: ∝ C^{fits[law]['exponent']:.2f}",
            )
            chinchilla = [getattr(rule_of_20(x), "n_params" if key == "n_opt" else "n_tokens") for x in line]
            ax.plot(line, chinchilla, "--", color="gray", label="20 tokens/param (Hoffmann et al.)")
        ax.set(xlabel="compute C (FLOPs)", ylabel=label)
        if not good:  # log axes with no data make matplotlib raise: say why the panel is empty instead
            ax.text(0.5, 0.5, "no budget has an IsoFLOP minimum", ha="center", transform=ax.transAxes)
            continue
        ax.set(xscale="log", yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    save_figure(fig, out / "optimal.png")


def sweep(
    cfg: Config, budgets: list[float], sizes: int, span: float, out: pathlib.Path, train, part: tuple[int, int] = (1, 1)
) -> dict | None:
    """Runs the grid (or part i of n of it: every n-th run from the i-th), then, once every run of the grid has its
    result in out, fits, plots and saves the law; returns the summary, or None while parts are missing."""
    out.mkdir(parents=True, exist_ok=True)
    runs = grid(cfg, budgets, sizes, span)
    index, parts = part
    execute(runs[index - 1 :: parts], out, train)
    missing = [run for run in runs if not (out / run.name / "scaling_result.json").is_file()]
    if missing:
        print(
            f"part {index}/{parts} done; {len(runs) - len(missing)} of {len(runs)} runs finished in {out}: run the "
            "other parts (same flags, --part=i/n) to fit"
        )
        return None
    records = execute(runs, out, train)  # every result is on disk by now: this only reads them
    fits = fit(records)
    # Kaplan et al.'s N beside Hoffmann et al.'s: at this scale the two give different exponents
    fits_non_embedding = fit(records, "non_embedding_params", intervals=False)
    key = setup_key(cfg)
    summary = {
        "experiment": cfg.name,
        "setup_key": key,
        "machine": machine.describe(),
        "date": time.strftime("%Y-%m-%d"),
        "budgets": budgets,
        "sizes": sizes,
        "span": span,
        "conventions": {
            "N": "total parameters, embeddings included (Hoffmann et al. 2022)",
            "D": "training tokens",
            "C": "exact training FLOPs, attention included",
            "fits_non_embedding": "the fits with N = non-embedding parameters (Kaplan et al.)",
        },
        "fits": fits,
        "fits_non_embedding": fits_non_embedding,
        "runs": records,
    }
    _write(out / "scaling.json", summary)
    if "E" in fits["loss_law"]:  # the planner's law for this setup (jaxllm.scaling.budget.find_law looks it up)
        law = {k: summary[k] for k in ("experiment", "setup_key", "machine", "date")} | {
            "loss_law": fits["loss_law"],
            "runs": len(records),
            "budgets": budgets,
            "sweep": str(out),
        }
        _write(out / "law.json", law)
        try:
            _write(machine.cache_dir() / "laws" / f"{key}.json", law)
        except OSError:
            pass  # the law is still in out/law.json, and --train.law=out reads it
    plot(records, fits, out)
    return summary


def _write(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _print_fits(summary: dict, out: pathlib.Path) -> None:
    fits = summary["fits"]
    for p in fits["isoflop"]:
        print(
            f"C={p['budget']:.3g}: "
            + (
                p["error"]
                if "error" in p
                else f"N_opt {human(p['n_opt'])}, D_opt {human(p['d_opt'])}, loss {p['loss_min']:.4f}"
                + ("" if p["inside_grid"] else " (extrapolated: outside the sizes trained)")
            )
        )
    for key, name in (("params_law", "N_opt"), ("tokens_law", "D_opt")):
        law = fits[key]
        print(f"{name} ∝ C^{law['exponent']:.3f}" if "exponent" in law else f"{name}: {law['error']}")
    interval = fits["params_law"].get("interval_95", {})
    if "params_exponent" in interval:
        low, high = interval["params_exponent"]
        print(f"  Approach 2, 95% bootstrap interval of the N_opt exponent: [{low:.3f}, {high:.3f}]")
    law = fits["loss_law"]
    if "E" in law:
        print(
            f"L(N, D) = {law['E']:.3f} + {law['A']:.4g}/N^{law['alpha']:.3f} + {law['B']:.4g}/D^{law['beta']:.3f}"
            f" (Approach 3: Huber on log loss from Hoffmann et al.'s grid of starts)"
        )
        ci = law["interval_95"]
        for name, label in (("alpha", "alpha"), ("beta", "beta"), ("params_exponent", "N_opt exponent a")):
            bounds = f" [{ci[name][0]:.3f}, {ci[name][1]:.3f}]" if name in ci else ""
            print(f"  {label} = {law[name]:.3f}{bounds}")
        print(
            f"  beside: Hoffmann et al. 2022 a = {HOFFMANN_2022.beta / (HOFFMANN_2022.alpha + HOFFMANN_2022.beta):.2f}"
            f" (Approach 3; about 0.50 by Approaches 1 and 2), Besiroglu et al. 2024 (Epoch AI) re-fit a = "
            f"{BESIROGLU_2024.beta / (BESIROGLU_2024.alpha + BESIROGLU_2024.beta):.2f}"
        )
    else:
        print(f"L(N, D): {law['error']}")
    kaplan = summary["fits_non_embedding"]["params_law"]
    if "exponent" in kaplan:
        print(f"with N the non-embedding parameters (Kaplan et al.): N_opt ∝ C^{kaplan['exponent']:.3f}")
    print(f"wrote {out / 'scaling.json'}, {out / 'law.json'}, {out / 'isoflop.png'}, {out / 'optimal.png'}")


def main(argv: list[str]) -> int:
    if not any(arg.startswith("--experiment=") for arg in argv):
        argv = [f"--experiment={DEFAULT_EXPERIMENT}", *argv]
    cfg, flags = parse_cli(argv, allowed_flags=FLAGS, switches=SWITCHES)
    budgets = [
        positive_number("budgets", raw, "1e12,3e12,1e13") for raw in flags.get("budgets", DEFAULT_BUDGETS).split(",")
    ]
    sizes = positive_number("sizes", flags.get("sizes", str(DEFAULT_SIZES)), "5")
    span = positive_number("span", flags.get("span", str(DEFAULT_SPAN)), "4")
    if not sizes.is_integer() or sizes < 3:
        raise ConfigError(f"--sizes={flags['sizes']}: a parabola needs a whole number of at least 3 model sizes")
    if span <= 1:
        raise ConfigError(f"--span={flags['span']}: the sizes reach span times either side of the center; use > 1")
    if len(set(budgets)) != len(budgets):
        raise ConfigError(f"--budgets={flags['budgets']} repeats a budget: list each once")
    part = _part(flags.get("part", "1/1"))
    out = pathlib.Path(flags.get("out") or f"runs/scaling/{cfg.name}")
    if flags.get("dry_run", "false").lower() in ("1", "true", "yes", "on"):
        runs = grid(cfg, budgets, int(sizes), span)
        for run in runs:
            m = run.cfg.model
            print(
                f"C={run.budget:.2g} {m.n_layer}x{m.n_embd} {human(param_count(m).total)} params "
                f"{human(run.tokens)} tokens {run.cfg.train.steps} steps"
            )
        print(f"{len(runs)} runs, {sum(r.flops for r in runs):.3g} FLOPs of training in all")
        return 0

    summary = sweep(cfg, budgets, int(sizes), span, out, train_run, part)
    if summary is not None:
        _print_fits(summary, out)
    return 0


def _part(raw: str) -> tuple[int, int]:
    index, _, parts = raw.partition("/")
    if not (index.isdigit() and parts.isdigit() and 1 <= int(index) <= int(parts)):
        raise ConfigError(f"--part={raw!r}: write i/n with 1 <= i <= n, e.g. --part=1/2 on one machine, 2/2 on another")
    return int(index), int(parts)
