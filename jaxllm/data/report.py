"""What the cleaning pipeline did: documents and bytes in and out of every stage, documents removed by every
rule with a few truncated examples, PII replacements, prose documents per language, throughput. Printed as a
table, written as report.json and drawn as report.png.

Reports add up: worker processes fill one per chunk of documents and the parent merges them in input order, so
counts and examples (the first ones in input order) do not depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys

# Pipeline order. Prose documents go through langid and the four prose filters, code documents through `code`; each
# stage counts every document, passing through unchanged those it does not apply to, so the stages chain.
STAGES = (
    "normalize",
    "url",
    "langid",
    "gopher_repetition",
    "gopher_quality",
    "c4",
    "fineweb",
    "code",
    "pii",
    "exact_dedup",
    "near_dedup",
)
EXAMPLE_CHARS = 160


@dataclasses.dataclass
class StageCounts:
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclasses.dataclass
class RuleCounts:
    docs: int = 0
    bytes: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)


class Report:
    def __init__(self, examples: int = 3):
        self.max_examples = examples
        self.stages = {name: StageCounts() for name in STAGES}
        self.rules: dict[str, RuleCounts] = {}  # 'stage/rule'
        self.pii = {"email": 0, "ip": 0, "phone": 0}
        self.languages: dict[str, int] = {}  # prose documents identified in each language, kept or not
        self.sources: dict = {}  # files read and skipped, when the caller passes its SourceStats
        self.near_clusters: dict = {}  # near-duplicate clusters (dedup.cluster_stats, with ids), set after dedup
        self.workers = 1
        self.seconds = 0.0

    def passed(self, stage: str, bytes_in: int, bytes_out: int) -> None:
        counts = self.stages[stage]
        counts.docs_in += 1
        counts.docs_out += 1
        counts.bytes_in += bytes_in
        counts.bytes_out += bytes_out

    def removed(self, stage: str, rule: str, doc_id: str, text: str, n_bytes: int, note: str = "") -> None:
        counts = self.stages[stage]
        counts.docs_in += 1
        counts.bytes_in += n_bytes
        entry = self.rules.setdefault(f"{stage}/{rule}", RuleCounts())
        entry.docs += 1
        entry.bytes += n_bytes
        if len(entry.examples) < self.max_examples:
            snippet = text[:EXAMPLE_CHARS] + ("..." if len(text) > EXAMPLE_CHARS else "")
            entry.examples.append(f"{doc_id}{note}: {snippet!r}")

    def merge(self, other: Report) -> None:
        """Adds the counts of a report on the documents that follow this one's."""
        for name, counts in other.stages.items():
            mine = self.stages[name]
            for f in dataclasses.fields(StageCounts):
                setattr(mine, f.name, getattr(mine, f.name) + getattr(counts, f.name))
        for rule, counts in other.rules.items():
            mine = self.rules.setdefault(rule, RuleCounts())
            mine.docs += counts.docs
            mine.bytes += counts.bytes
            mine.examples += counts.examples[: self.max_examples - len(mine.examples)]
        for kind, n in other.pii.items():
            self.pii[kind] += n
        for language, n in other.languages.items():
            self.languages[language] = self.languages.get(language, 0) + n

    def _sorted_rules(self) -> list[tuple[str, RuleCounts]]:
        return sorted(self.rules.items(), key=lambda item: (STAGES.index(item[0].split("/")[0]), item[0]))

    def _sorted_languages(self) -> dict[str, int]:
        """Most documents first, ties by code: the same order whatever the merge order."""
        return dict(sorted(self.languages.items(), key=lambda item: (-item[1], item[0])))

    def to_dict(self) -> dict:
        documents = self.stages["normalize"].docs_in
        return {
            "stages": {name: dataclasses.asdict(c) for name, c in self.stages.items()},
            "rules": {name: dataclasses.asdict(c) for name, c in self._sorted_rules()},
            "pii_replaced": dict(self.pii),
            "languages": self._sorted_languages(),
            "sources": self.sources,
            "near_dedup_clusters": self.near_clusters,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "docs_per_second": round(documents / self.seconds, 1) if self.seconds else None,
        }

    def print_table(self, file=None) -> None:
        file = file or sys.stdout
        print(f"{'stage':<18}{'docs in':>10}{'docs out':>10}{'MB in':>10}{'MB out':>10}", file=file)
        for name, c in self.stages.items():
            print(
                f"{name:<18}{c.docs_in:>10,}{c.docs_out:>10,}{c.bytes_in / 1e6:>10.2f}{c.bytes_out / 1e6:>10.2f}",
                file=file,
            )
        if self.rules:
            print(f"\n{'removed by':<34}{'docs':>8}{'MB':>8}  first example", file=file)
            for name, c in self._sorted_rules():
                example = c.examples[0] if c.examples else ""
                print(f"{name:<34}{c.docs:>8,}{c.bytes / 1e6:>8.2f}  {example[:70]}", file=file)
        print(
            f"\nPII replaced: {self.pii['email']:,} e-mail addresses, {self.pii['ip']:,} IP addresses, "
            f"{self.pii['phone']:,} phone numbers",
            file=file,
        )
        if self.languages:
            print("languages: " + ", ".join(f"{lang} {n:,}" for lang, n in self._sorted_languages().items()), file=file)
        if self.near_clusters:
            self._print_clusters(file)
        if self.sources:
            print(
                f"sources: {self.sources['files_read']:,} files read, {self.sources['files_skipped']:,} skipped",
                file=file,
            )
        rate = self.to_dict()["docs_per_second"]
        print(
            f"{self.seconds:.1f}s with {self.workers} worker(s)" + (f", {rate:,.0f} docs/s" if rate else ""), file=file
        )

    def _print_clusters(self, file) -> None:
        c = self.near_clusters
        sizes = ", ".join(f"{size}: {n:,}" for size, n in c["size_histogram"].items())
        print(
            f"near duplicates: {c['clusters']:,} clusters of 2+ documents ({sizes}), {c['removed']:,} removed; "
            f"{c['verified_pairs']:,} of {c['candidate_pairs']:,} candidate pairs verified",
            file=file,
        )
        for example in c["largest"]:
            print(f"  {example['size']:,} documents, kept {example['kept']}: also {example['members']}", file=file)

    def write(self, directory: str | os.PathLike) -> None:
        """report.json and report.png in directory, each written to a temporary name and renamed when complete."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "report.json.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, directory / "report.json")
        tmp = directory / "report.png.tmp"
        self._draw(tmp)
        os.replace(tmp, directory / "report.png")

    def _draw(self, path: pathlib.Path) -> None:
        import matplotlib  # noqa: PLC0415 (workers and the cheap commands never draw: not at import)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415 (as above)

        rules = self._sorted_rules()
        fig, (ax_stages, ax_rules) = plt.subplots(1, 2, figsize=(13, max(4, 0.3 * len(rules) + 1.5)))
        names = list(self.stages)
        ax_stages.barh(names, [self.stages[n].docs_out for n in names], color="tab:blue")
        ax_stages.invert_yaxis()
        ax_stages.set_title("documents after each stage")
        ax_rules.barh([name for name, _ in rules] or ["(none)"], [c.docs for _, c in rules] or [0], color="tab:red")
        ax_rules.invert_yaxis()
        ax_rules.set_title("documents removed by each rule")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)
