"""Language identification: languages of hand-made paragraphs, the kept languages and the score threshold, the
language in each kept document's meta, per-language counts in the report, one model load per process."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from jaxllm.config import ConfigError
from jaxllm.config.clean import CleanConfig, LangIdConfig
from jaxllm.data import langid
from jaxllm.data.clean import Cleaner
from jaxllm.data.report import Report
from jaxllm.data.sources import Document

PARAGRAPHS = {
    "en": "The town council decided on Tuesday to extend the opening hours of the library. Many residents had "
    "complained that they could no longer borrow books after work, and the new hours start next month.",
    "de": "Die Stadtverwaltung hat am Dienstag beschlossen, die Öffnungszeiten der Bibliothek zu verlängern. Viele "
    "Bürger hatten sich darüber beschwert, dass sie nach der Arbeit keine Bücher mehr ausleihen konnten.",
    "fr": "Le conseil municipal a décidé mardi de prolonger les horaires d'ouverture de la bibliothèque. De nombreux "
    "habitants se plaignaient de ne plus pouvoir emprunter de livres après le travail.",
    "es": "El ayuntamiento decidió el martes ampliar el horario de apertura de la biblioteca. Muchos vecinos se "
    "quejaban de que no podían sacar libros después del trabajo y pidieron abrir también los sábados.",
}
# a line of code read as prose: no language scores well
CODE = "for i in range(10):\n    total = add(total, i * 2)\n"


def long(paragraph: str) -> str:
    """Three copies: 6 sentences and over 50 words, enough for the prose filters (repetition aside)."""
    return " ".join([paragraph] * 3)


@pytest.mark.parametrize("language", sorted(PARAGRAPHS))
def test_paragraphs_are_identified(language):
    found, score = langid.identify(PARAGRAPHS[language])
    assert found == language
    assert score > 0.9


def test_capitals_do_not_change_the_language():
    assert langid.identify(PARAGRAPHS["en"].upper() + " Write to clerk@example.org.") == langid.identify(
        PARAGRAPHS["en"] + " Write to clerk@example.org."
    )


def test_kept_languages_and_threshold():
    cfg = LangIdConfig()  # English, score >= 0.65
    assert langid.language_rule("en", 0.65, cfg) is None
    assert langid.language_rule("en", 0.6499, cfg) == "low_score"
    assert langid.language_rule("de", 0.99, cfg) == "language_de"
    assert langid.language_rule("de", 0.99, dataclasses.replace(cfg, languages=("en", "de"))) is None
    assert langid.language_rule("sw", 0.7, dataclasses.replace(cfg, languages=())) is None  # every language kept
    _, score = langid.identify(CODE)
    assert score < 0.65


@pytest.mark.parametrize(
    "cfg, message",
    [
        (LangIdConfig(languages=("english",)), "english unknown to py3langid"),
        (LangIdConfig(min_score=1.5), "min_score=1.5: must be in [0, 1]"),
    ],
)
def test_bad_config(cfg, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        langid.language_rule("en", 1.0, cfg)


def test_cleaner_records_language_and_drops_other_languages():
    docs = [
        Document("en", long(PARAGRAPHS["en"]), "test"),
        Document("de", long(PARAGRAPHS["de"]), "test"),
        Document("code.py", CODE, "test", kind="code"),  # code is not identified
    ]
    cfg = CleanConfig(repetition=dataclasses.replace(CleanConfig().repetition, enabled=False))  # text written 3x
    kept, report = Cleaner(cfg).clean_chunk(docs)
    assert [c.doc.id for c in kept] == ["en", "code.py"]
    meta = dict(kept[0].doc.meta)
    assert meta["lang"] == "en" and 0.9 < meta["lang_score"] <= 1
    assert kept[1].doc.meta == ()
    assert report.languages == {"en": 1, "de": 1}
    assert {rule: c.docs for rule, c in report.rules.items() if rule.startswith("langid/")} == {"langid/language_de": 1}
    assert (report.stages["langid"].docs_in, report.stages["langid"].docs_out) == (3, 2)


def test_cleaner_drops_a_low_score():
    cfg = CleanConfig(langid=LangIdConfig(languages=()))  # every language kept: only the score decides
    kept, report = Cleaner(cfg).clean_chunk([Document("code-as-prose", CODE, "test")])
    assert kept == []
    assert list(report.rules) == ["langid/low_score"]
    assert report.rules["langid/low_score"].examples[0].startswith("code-as-prose: ")


def test_language_counts_merge_and_show_in_the_report():
    cleaner = Cleaner(CleanConfig())
    first = cleaner.clean_chunk([Document(k, long(v), "test") for k, v in PARAGRAPHS.items()])[1]
    second = cleaner.clean_chunk([Document("de2", long(PARAGRAPHS["de"]), "test")])[1]
    total = Report()
    total.merge(first)
    total.merge(second)
    assert total.to_dict()["languages"] == {"de": 2, "en": 1, "es": 1, "fr": 1}
    assert list(json.loads(json.dumps(total.to_dict()))["languages"]) == ["de", "en", "es", "fr"]
    printed = io.StringIO()
    total.print_table(printed)
    assert "languages: de 2, en 1, es 1, fr 1" in printed.getvalue()


def test_disabled_langid_records_nothing():
    cfg = CleanConfig(langid=LangIdConfig(enabled=False))
    kept, report = Cleaner(cfg).clean_chunk([Document("de", long(PARAGRAPHS["de"]), "test")])
    assert report.languages == {}
    assert all(dict(c.doc.meta).get("lang") is None for c in kept)


def test_model_loads_once_per_process():
    langid._model.cache_clear()
    for _ in range(2):  # two cleaners, as a worker that was handed two configs would build
        Cleaner(CleanConfig()).clean_chunk([Document(k, v, "test") for k, v in PARAGRAPHS.items()])
    assert langid._model.cache_info().misses == 1
