"""Provenance from data to model: every checkpoint names the prepared data's hash and the run it started from;
`python -m jaxllm.inspect` prints the lineage data -> tokenizer -> pretraining -> SFT -> DPO -> export; an exported
model's card (README.md) carries the same figures. Checked on the shared tiny lineage (base -> sft -> dpo, 6 steps
each), with the hashes recomputed here from the files."""

import hashlib
import json

import pytest

from jaxllm import hf
from jaxllm import inspect as inspect_command
from jaxllm.eval import lineage
from jaxllm.train import checkpoint

pytestmark = pytest.mark.slow  # the shared tiny lineage takes about half a minute when no other test built it


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_data_hash(prepared) -> str:
    """The manifest and the cleaning report without their timings (and the cache's location), as canonical JSON."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    del manifest["seconds"]
    del manifest["data"]["cache_dir"]
    report = json.loads((prepared / "report.json").read_text())
    for key in ("seconds", "workers", "docs_per_second"):
        del report[key]
    return sha256(json.dumps({"manifest": manifest, "report": report}, sort_keys=True, separators=(",", ":")).encode())


def metas(run_dir) -> dict[int, dict]:
    mngr = checkpoint.manager(run_dir, read_only=True)
    out = {step: checkpoint.read_meta(mngr, step) for step in mngr.all_steps()}
    mngr.close()
    return out


def last_evaluation(run_dir) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "val_loss" in r][-1]
    return {k: v for k, v in last.items() if k not in ("step", "time_s")}


@pytest.fixture(scope="module")
def facts(tiny_lineage):
    root = tiny_lineage["root"]
    (prepared,) = [p.parent for p in (root / "cache").glob("*/manifest.json")]
    return {
        "root": root,
        "prepared": prepared,
        "data_hash": expected_data_hash(prepared),
        "tokenizer_sha256": sha256((prepared / "tokenizer.model").read_bytes()),
    }


def test_every_checkpoint_names_its_data_and_start(facts):
    root = facts["root"]
    for run, stage, start in (("base", "pretraining", None), ("sft", "sft", "base"), ("dpo", "dpo", "sft")):
        saved = metas(root / run)
        assert sorted(saved) == [6]  # checkpoint_every=6 of 6 steps: the final checkpoint only
        p = saved[6]["provenance"]
        assert p["stage"] == stage
        assert p["data"]["hash"] == facts["data_hash"]
        assert p["data"]["dir"] == str(facts["prepared"].resolve())
        assert p["tokenizer_sha256"] == facts["tokenizer_sha256"]
        manifest = json.loads((facts["prepared"] / "manifest.json").read_text())
        assert p["data"]["tokenizer"] == {"kind": "bpe", "vocab_size": 512, "sha256": manifest["tokenizer_sha256"]}
        assert p["data"]["splits"]["train"]["tokens"] == manifest["splits"]["train"]["tokens"]
        if start is None:
            assert p["parent"] is None
        else:
            assert p["parent"] == {
                "run_dir": str((root / start).resolve()),
                "step": 6,
                "stage": "pretraining" if start == "base" else start,
                "data_hash": facts["data_hash"],
                "tokenizer_sha256": facts["tokenizer_sha256"],
            }


def test_inspect_prints_the_lineage_with_hashes_steps_and_figures(facts, capsys):
    root = facts["root"]
    chain = lineage.links(root / "dpo")
    assert [(link.run_dir.name, link.stage, link.step) for link in chain] == [
        ("base", "pretraining", 6),
        ("sft", "sft", 6),
        ("dpo", "dpo", 6),
    ]
    for link in chain:
        assert link.figures == last_evaluation(link.run_dir)
    # tokens: steps x batch 4 x block_size 32 (pretraining) or posttrain.seq_len 24
    assert [link.tokens for link in chain] == [6 * 4 * 32, 6 * 4 * 24, 6 * 4 * 24]

    assert inspect_command.main([f"--run_dir={root / 'dpo'}"]) == 0
    out = capsys.readouterr().out
    blocks = out.strip().split("\n\n")
    assert [b.split()[0] for b in blocks[:5]] == ["data", "tokenizer", "pretraining", "sft", "dpo"]
    report = json.loads((facts["prepared"] / "report.json").read_text())
    stages = list(report["stages"].values())
    assert blocks[0].splitlines()[0] == f"data         sha256 {facts['data_hash']}"
    assert f"  cleaning   {stages[0]['docs_in']:,} documents in, {stages[-1]['docs_out']:,} kept" in blocks[0]
    assert blocks[1] == f"tokenizer    bpe, 512 tokens, sha256 {facts['tokenizer_sha256']}"
    for block, link, start in zip(blocks[2:5], chain, [None, "base", "sft"]):
        lines = block.splitlines()
        assert lines[0] == f"{link.stage:<12} {link.run_dir} ({link.cfg.name})"
        if start:
            assert lines[1] == f"  from       {root / start} at step 6; data hash the same"
        assert f"  checkpoint step 6, {link.tokens:,} tokens trained" in lines
        figures = last_evaluation(link.run_dir)
        assert lines[-1] == "  final      " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items())


def test_export_writes_a_model_card_and_inspect_shows_the_export(facts, tmp_path, capsys):
    root = facts["root"]
    evaluation = {  # the part of python -m jaxllm.evaluate's output the card shows
        "runs": {
            str(root / "sft"): {
                "stage": "sft",
                "step": 6,
                "val_loss": 1.5,
                "mc_acc": 0.25,
                "tasks": {"add": {"pass@1": 0.5, "n": 4}},
                "samples": ["a reply"],
            }
        }
    }
    (root / "sft" / "evaluation.json").write_text(json.dumps(evaluation))
    try:
        out = hf.export(root / "sft", tmp_path / "exported")
    finally:
        (root / "sft" / "evaluation.json").unlink()
    card = (out / "README.md").read_text()
    evaluated = f"- sft (`{root / 'sft'}`): val_loss 1.5000, mc_acc 0.2500, pass@1 add 0.5000\n"
    assert "## Evaluation\n\npython -m jaxllm.evaluate:\n\n" + evaluated in card
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"- data hash (sha256 of the prepared manifest and cleaning counts): `{facts['data_hash']}`" in card
    assert f"- tokenizer: bpe, 512 tokens, sha256 `{facts['tokenizer_sha256']}`" in card
    for run, stage, tokens in (("base", "pretraining", 6 * 4 * 32), ("sft", "sft", 6 * 4 * 24)):
        figures = ", ".join(f"{k} {v:.4f}" for k, v in last_evaluation(root / run).items())
        assert f"| {stage} | `{root / run}` | 6 | {tokens:,} | {figures} |" in card
    assert "`" + str(root / "dpo") + "`" not in card  # the exported run's own lineage, not its descendants
    exports = (root / "sft" / "exports.jsonl").read_text().splitlines()
    assert json.loads(exports[-1]) == {"out": str(out.resolve()), "step": 6}
    hf.export(root / "sft", tmp_path / "exported")  # the same export again is listed once
    assert (root / "sft" / "exports.jsonl").read_text().splitlines() == exports

    assert inspect_command.main([f"--run_dir={root / 'sft'}"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert blocks[-1] == f"export       {out.resolve()} (step 6 of {root / 'sft'})"
    assert "python -m jaxllm.inspect" in card and blocks[0].splitlines()[0] in card

    hf.import_(out, tmp_path / "imported")  # an imported checkpoint starts a lineage of its own
    assert inspect_command.main([f"--run_dir={tmp_path / 'imported'}"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert blocks == [
        f"data         imported from {out.resolve()}",
        f"tokenizer    bpe, 512 tokens, sha256 {facts['tokenizer_sha256']}",
        f"imported     {tmp_path / 'imported'} (sft)\n"  # the name in the exported config
        f"  imported   from {out.resolve()} (python -m jaxllm.hf import)\n"
        "  checkpoint step 0, 0 tokens trained\n"
        "  final      none logged",
    ]
