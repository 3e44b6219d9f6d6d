"""A run's lineage read back from its checkpoints: data -> tokenizer -> pretraining -> each post-training stage ->
exports, with hashes, steps and final figures. `python -m jaxllm.inspect` prints it (`text`); `python -m jaxllm.hf
export` writes it into the exported model's card (`card`) and records the export in the run (`record_export`).

What one checkpoint records is jaxllm.train.provenance's; the runs a run started from are followed through their
saved train.init_from (jaxllm.eval.suite.lineage).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from etils import epath

from jaxllm import storage
from jaxllm.config import Config, ConfigError, config_from_dict
from jaxllm.eval.suite import lineage
from jaxllm.model.accounting import param_count
from jaxllm.train import checkpoint
from jaxllm.train.metrics import read_jsonl

EXPORTS = "exports.jsonl"  # in a run directory: one {'out', 'step'} line per export of the run (hf export)
EVALUATION = "evaluation.json"  # python -m jaxllm.evaluate's default output, in the last run directory it names


@dataclasses.dataclass(frozen=True)
class Link:
    """One run of a lineage, as its checkpoint at `step` and its directory tell."""

    run_dir: epath.Path  # local or gs://
    step: int
    cfg: Config
    provenance: dict  # jaxllm.train.provenance's record; {} for a checkpoint made before it was recorded
    figures: dict  # the last evaluation at or before step: metrics.jsonl's record (without step and time_s)
    exports: list[dict]  # {'out', 'step'} from EXPORTS

    @property
    def stage(self) -> str:
        return self.provenance.get("stage") or self.cfg.posttrain.stage or "pretraining"

    @property
    def imported_from(self) -> str:
        """The Hugging Face directory python -m jaxllm.hf import read, or ''."""
        return (self.provenance.get("parent") or {}).get("hf_dir", "") if self.stage == "imported" else ""

    @property
    def tokens(self) -> int:
        """Tokens trained on: steps x sequences a step x tokens a sequence."""
        length = self.cfg.posttrain.seq_len if self.cfg.posttrain.stage else self.cfg.model.block_size
        return self.step * self.cfg.train.batch_size * length


def _last_evaluation(run_dir: epath.Path, step: int, final: dict) -> dict:
    """The figures of the run's last evaluation at or before step (the checkpoint's final ones without a log)."""
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r and r["step"] <= step]
    if not records:
        return {k: final[k] for k in ("val_loss", "val_bpb") if k in final}
    return {k: v for k, v in records[-1].items() if k not in ("step", "time_s")}


def _link(run_dir: epath.Path, step: int | None) -> Link:
    mngr = checkpoint.manager(run_dir, read_only=True)
    step = mngr.latest_step() if step is None else step
    meta = checkpoint.read_meta(mngr, step)
    mngr.close()
    return Link(
        run_dir=run_dir,
        step=step,
        cfg=config_from_dict(meta["config"]),
        provenance=meta.get("provenance", {}),
        figures=_last_evaluation(run_dir, step, meta.get("final", {})),
        exports=read_jsonl(run_dir / EXPORTS),
    )


def links(run_dir: str | os.PathLike, step: int | None = None) -> list[Link]:
    """run_dir's lineage, oldest first, each at its latest checkpoint (run_dir's own at `step` if given)."""
    run_dir = storage.path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(
            f"--run_dir={run_dir} holds no checkpoints: pass a run directory (python -m jaxllm.train, sft, dpo, "
            "rl or hf import writes one)"
        )
    chain = [d for d in lineage(run_dir) if (d / "checkpoints").is_dir()]  # a start since deleted is left out
    runs = [_link(d, step if d == run_dir else None) for d in chain]
    # an imported checkpoint starts its own lineage: the config it brought names the exported run's start, which
    # this checkpoint does not vouch for
    imported = [i for i, link in enumerate(runs) if link.imported_from]
    return runs[imported[-1] :] if imported else runs


def evaluations(chain: list[Link]) -> dict[str, dict]:
    """python -m jaxllm.evaluate's headline figures for the runs of the chain, by each run's absolute path, from the
    evaluation.json files in their directories (a later run's file wins): held-out loss and bits/byte, multiple
    choice, pass@1 per task, DPO's held-out reward accuracy."""
    out = {}
    for link in chain:
        path = link.run_dir / EVALUATION
        results = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
        for name, r in results.items():
            figures = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            figures.pop("step", None)
            figures |= {f"pass@1 {task}": t["pass@1"] for task, t in r.get("tasks", {}).items()}
            if "dpo_heldout" in r:
                figures["DPO held-out reward_acc"] = r["dpo_heldout"]["reward_acc"]
            out[storage.resolve(name)] = figures
    return out


def record_export(run_dir: str | os.PathLike, out: pathlib.Path, step: int) -> None:
    """Appends the export to the run's EXPORTS, once per directory and step."""
    record = {"out": str(pathlib.Path(out).resolve()), "step": step}
    path = storage.path(run_dir) / EXPORTS
    if record in read_jsonl(path):
        return
    try:
        storage.append_line(path, json.dumps(record))
    except (OSError, ConfigError):  # a read-only run (someone else's) still exports; only its list lacks this one
        pass


def _numbers(figures: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in figures.items()) or "none logged"


def _splits(data: dict) -> str:
    return "; ".join(
        f"{name}: {s['documents']:,} documents, {s['tokens']:,} tokens, {s['bytes']:,} bytes"
        for name, s in data["splits"].items()
    )


def _cleaning(c: dict) -> str:
    removed = ", ".join(f"{stage} {n:,}" for stage, n in c["removed"].items()) or "none"
    return f"{c['documents_in']:,} documents in, {c['documents_kept']:,} kept; removed by {removed}"


def _pii(c: dict) -> str:
    return "replaced " + ", ".join(f"{kind} {n:,}" for kind, n in c["pii_replaced"].items())


def _data_lines(data: dict | None, root: Link) -> list[str]:
    if data is None:
        why = (
            f"imported from {root.imported_from}"
            if root.imported_from
            else "not recorded (a checkpoint made before provenance, or no prepared data)"
        )
        return [f"data         {why}"]
    lines = [f"data         sha256 {data['hash']}", f"  prepared   {data['dir']}"]
    lines += [f"  sources    {', '.join(data['sources'])}", f"  splits     {_splits(data)}"]
    if data["cleaning"]:
        lines += [f"  cleaning   {_cleaning(data['cleaning'])}", f"  PII        {_pii(data['cleaning'])}"]
    return lines


def _data_card(data: dict | None) -> list[str]:
    if data is None:
        return ["Not recorded (an imported model, or a checkpoint made before jaxllm recorded provenance)."]
    t = data["tokenizer"]
    lines = [
        f"- data hash (sha256 of the prepared manifest and cleaning counts): `{data['hash']}`",
        f"- sources: {', '.join(f'`{s}`' for s in data['sources'])}",
        f"- splits: {_splits(data)}",
    ]
    if data["cleaning"]:
        lines += [f"- cleaning: {_cleaning(data['cleaning'])}", f"- PII: {_pii(data['cleaning'])}"]
    return lines + [f"- tokenizer: {t['kind']}, {t['vocab_size']:,} tokens, sha256 `{t['sha256']}`"]


def _run_lines(link: Link, before: Link | None, tokenizer_sha256: str | None) -> list[str]:
    p = link.provenance
    lines = [f"{link.stage:<12} {link.run_dir} ({link.cfg.name})"]
    parent = p.get("parent") or {}
    if before is not None and parent.get("run_dir"):
        moved = f"; it is now at step {before.step}" if parent["step"] != before.step else ""
        same = parent.get("data_hash") == (before.provenance.get("data") or {}).get("hash")
        lines.append(
            f"  from       {before.run_dir} at step {parent['step']}{moved}; data hash "
            + ("the same" if same else f"{parent.get('data_hash')} (the start's is now another)")
        )
    elif link.imported_from:
        lines.append(f"  imported   from {link.imported_from} (python -m jaxllm.hf import)")
    elif parent.get("hf_dir"):
        lines.append(f"  from       Hugging Face {parent['hf_dir']} (train.init_from=hf:...)")
    lines.append(f"  checkpoint step {link.step:,}, {link.tokens:,} tokens trained")
    if p.get("tokenizer_sha256") and p["tokenizer_sha256"] != tokenizer_sha256:
        lines.append(f"  tokenizer  sha256 {p['tokenizer_sha256']} (not the data's)")
    lines.append(f"  final      {_numbers(link.figures)}")
    return lines


def text(chain: list[Link]) -> str:
    """The lineage as `python -m jaxllm.inspect` prints it: one block per link."""
    root = chain[0]
    data = next((link.provenance.get("data") for link in chain if link.provenance.get("data")), None)
    tokenizer_sha256 = root.provenance.get("tokenizer_sha256") or "not recorded"
    kind = data["tokenizer"] if data else {"kind": root.cfg.data.tokenizer, "vocab_size": root.cfg.model.vocab_size}
    blocks = [
        _data_lines(data, root),
        [f"tokenizer    {kind['kind']}, {kind['vocab_size']:,} tokens, sha256 {tokenizer_sha256}"],
    ]
    for i, link in enumerate(chain):
        blocks.append(_run_lines(link, chain[i - 1] if i else None, tokenizer_sha256))
        blocks += [[f"export       {e['out']} (step {e['step']:,} of {link.run_dir})"] for e in link.exports]
    return "\n\n".join("\n".join(block) for block in blocks)


def card(chain: list[Link], out: pathlib.Path) -> str:
    """An exported model's README.md: what it is, its data, each training stage and its figures, the evaluation
    figures python -m jaxllm.evaluate left in the runs' directories, and the lineage as inspect prints it."""
    last, m = chain[-1], chain[-1].cfg.model
    data = next((link.provenance.get("data") for link in chain if link.provenance.get("data")), None)
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- jaxllm",
        f"- {m.family}",
        "---",
        "",
        f"# {last.cfg.name}",
        "",
        f"A {m.family} causal language model, {param_count(m).total / 1e6:.2f}M parameters ({m.n_layer} layers, "
        f"width {m.n_embd}, {m.block_size}-token context), trained with jaxllm and exported from `{last.run_dir}` "
        f"at step {last.step:,} to `{out}`.",
        "",
        "## Data",
        "",
        *_data_card(data),
        "",
        "## Training",
        "",
        "| stage | run | steps | tokens | final figures |",
        "|---|---|---|---|---|",
        *(
            f"| {link.stage} | `{link.run_dir}` | {link.step:,} | {link.tokens:,} | {_numbers(link.figures)} |"
            for link in chain
        ),
        "",
    ]
    evaluated = evaluations(chain)
    rows = [(link, evaluated[key]) for link in chain if (key := storage.resolve(link.run_dir)) in evaluated]
    if rows:
        lines += ["## Evaluation", "", "python -m jaxllm.evaluate:", ""]
        lines += [f"- {link.stage} (`{link.run_dir}`): {_numbers(figures)}" for link, figures in rows]
        lines.append("")
    lines += ["## Lineage", "", "python -m jaxllm.inspect --run_dir=" + str(last.run_dir) + ":", ""]
    lines += [f"    {line}" if line else "" for line in text(chain).splitlines()]  # a Markdown code block
    return "\n".join(lines) + "\n"
