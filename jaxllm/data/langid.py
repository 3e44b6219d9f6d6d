"""Language identification of prose documents with py3langid, whose model ships inside its wheel (nothing is
downloaded). The model loads once per process, at the first document that needs it, so a worker pays for it once
and a corpus of code alone never does. Not a filter by itself: `language_rule` decides from what `identify` found.
"""

from __future__ import annotations

import functools

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from jaxllm.config import ConfigError
from jaxllm.config.clean import LangIdConfig


@functools.cache
def _model() -> LanguageIdentifier:
    # norm_probs: scores are probabilities over the model's languages, so one threshold means the same for any text
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str, float]:
    """(ISO 639 code of the most likely language, its probability rounded to 4 decimals)."""
    # case tells nothing of the language, but the model's features do see it: a paragraph in capitals followed by
    # an e-mail address in lower case scored 0.06 as written (py3langid lower-cases only text with no lower case)
    language, score = _model().classify(text.lower())
    return language, round(score, 4)


@functools.cache
def check_config(cfg: LangIdConfig) -> None:
    """Raises ConfigError for a threshold outside [0, 1] or a language the model does not know (checked once)."""
    if not 0 <= cfg.min_score <= 1:
        raise ConfigError(f"data.clean.langid.min_score={cfg.min_score}: must be in [0, 1], e.g. 0.65")
    unknown = sorted(set(cfg.languages) - set(_model().labels))
    if unknown:
        raise ConfigError(
            f"data.clean.langid.languages: {', '.join(unknown)} unknown to py3langid: use ISO 639 codes such as "
            "en, de, fr"
        )


def language_rule(language: str, score: float, cfg: LangIdConfig) -> str | None:
    """The rule that removes a document of this language and score ('language_<code>' or 'low_score'), or None."""
    check_config(cfg)
    if cfg.languages and language not in cfg.languages:
        return f"language_{language}"
    if score < cfg.min_score:
        return "low_score"
    return None
