"""Per-document cleaning: normalisation, the quality filters of the document's kind, PII scrubbing, dedup keys.

`Cleaner.clean_chunk` is what each worker process runs; it touches one document at a time and keeps no state
between documents, so any split of the corpus into chunks gives the same result. Dedup itself needs the whole
corpus and happens in the parent (see pipeline.py).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

import numpy as np

from jaxllm.config.clean import CleanConfig, NormalizeConfig
from jaxllm.data import filters_prose, langid
from jaxllm.data.dedup import MinHasher, exact_key
from jaxllm.data.filters_code import code_profile
from jaxllm.data.filters_url import url_filter
from jaxllm.data.pii import scrub
from jaxllm.data.report import Report
from jaxllm.data.sources import Document

# C0 and C1 control characters except tab (\x09) and newline (\x0a), DEL, and the byte-order mark; carriage
# returns are turned into newlines before this applies.
CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")


def normalize(text: str, cfg: NormalizeConfig) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.unicode_form:
        text = unicodedata.normalize(cfg.unicode_form, text)
    if cfg.drop_control_chars:
        text = CONTROL_RE.sub("", text)
    return text


@dataclasses.dataclass(frozen=True)
class Cleaned:
    doc: Document
    n_bytes: int
    exact_key: bytes
    signature: np.ndarray | None  # (num_perm,) uint32 MinHash values; None without words or with near dedup off


def _n_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


class Cleaner:
    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.minhasher = MinHasher(cfg.dedup) if cfg.dedup.near else None
        c = cfg
        # (stage, kind it applies to or None for all, enabled, (text, report, document as read) -> (rule that
        # removes the document or None, new text[, (key, value) pairs for the document's meta])), in the order of
        # report.STAGES.
        self.stages = (
            ("normalize", None, True, self._normalize),
            ("url", None, c.url.enabled, self._url),
            ("langid", "prose", c.langid.enabled, self._langid),
            (
                "gopher_repetition",
                "prose",
                c.repetition.enabled,
                lambda t, r, d: (filters_prose.gopher_repetition(t, c.repetition), t),
            ),
            (
                "gopher_quality",
                "prose",
                c.quality.enabled,
                lambda t, r, d: (filters_prose.gopher_quality(t, c.quality), t),
            ),
            ("c4", "prose", c.c4.enabled, lambda t, r, d: filters_prose.c4(t, c.c4)),
            ("fineweb", "prose", c.fineweb.enabled, lambda t, r, d: (filters_prose.fineweb(t, c.fineweb), t)),
            ("code", "code", c.code.enabled, lambda t, r, d: (code_profile(t, c.code), t)),
            ("pii", None, c.pii.enabled, self._scrub),
        )

    def _normalize(self, text: str, report: Report, doc: Document) -> tuple[str | None, str]:
        text = normalize(text, self.cfg.normalize)
        return ("empty" if not text.strip() else None), text

    def _url(self, text: str, report: Report, doc: Document) -> tuple[str | None, str]:
        url = dict(doc.meta).get("url")
        return (url_filter(url, self.cfg.url) if url else None), text

    def _langid(self, text: str, report: Report, doc: Document) -> tuple[str | None, str, tuple]:
        language, score = langid.identify(text)
        report.languages[language] = report.languages.get(language, 0) + 1
        return langid.language_rule(language, score, self.cfg.langid), text, (("lang", language), ("lang_score", score))

    def _scrub(self, text: str, report: Report, doc: Document) -> tuple[None, str]:
        text, counts = scrub(text, self.cfg.pii)
        for kind, n in counts.items():
            report.pii[kind] += n
        return None, text

    def clean(self, doc: Document, report: Report) -> Cleaned | None:
        """The cleaned document with its dedup keys, or None when a rule removed it (recorded in report)."""
        text, size, meta = doc.text, _n_bytes(doc.text), doc.meta
        for stage, kind, enabled, apply in self.stages:
            if not enabled or kind not in (None, doc.kind):
                report.passed(stage, size, size)
                continue
            rule, new_text, *found = apply(text, report, doc)
            if rule:
                report.removed(stage, rule, doc.id, text, size)
                return None
            new_size = size if new_text == text else _n_bytes(new_text)
            report.passed(stage, size, new_size)
            text, size, meta = new_text, new_size, meta + (found[0] if found else ())
        return Cleaned(
            dataclasses.replace(doc, text=text, meta=meta),
            size,
            exact_key(text),
            self.minhasher.signature(text) if self.minhasher else None,
        )

    def clean_chunk(self, docs: list[Document]) -> tuple[list[Cleaned], Report]:
        report = Report(self.cfg.examples)
        return [c for doc in docs if (c := self.clean(doc, report)) is not None], report
