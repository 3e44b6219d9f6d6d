"""Quality filters for prose: Gopher repetition and quality rules, C4 line filters, FineWeb's additions.

Each follows datatrove's implementation of the published rule (same order of checks, same comparisons), so a
threshold means what the paper and datatrove say it means, except where datatrove departs from the paper: Gopher's
ratios are per word, as the paper states them, not per token (see gopher_quality). The papers and reference files
are cited beside each threshold in config/clean.py. Each returns the name of the rule that removes the document,
or None to keep it; `c4` also returns the text with its rejected lines dropped. Not for source code: see
filters_code.
"""

from __future__ import annotations

import re
from collections import Counter

from jaxllm.config.clean import C4Config, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig

# datatrove splits words with NLTK's tokenizer, which makes punctuation runs separate tokens; this regex does the
# same without the dependency (words keep inner apostrophes and hyphens: "don't", "well-known").
WORD_RE = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]+")
PARAGRAPH_SPLIT_RE = re.compile(r"\n{2,}")
# blank lines are not lines (else they would all count as duplicates), as in datatrove's repetition filter
LINE_SPLIT_RE = re.compile(r"\n+")
# datatrove counts a line's sentences with NLTK's punkt, whose model is a separate download; this counts runs of
# end punctuation before a space or the end, and the words after the last one as one more (as punkt does)
SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)")
CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
C4_POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
FINEWEB_STOP_CHARS = (".", "'", '"', "!", "?")
GOPHER_BULLETS = ("•", "-")  # datatrove's bullets (the paper names none)


def split_words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, characters in them)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _ngrams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _top_ngram_chars(ngrams: list[str]) -> int:
    gram, count = Counter(ngrams).most_common(1)[0]
    return len(gram) * count


def _duplicated_ngram_chars(ngrams: list[str], n: int) -> int:
    """Characters in n-grams seen before, skipping past each repeat so overlapping repeats count once; the spaces
    between an n-gram's words do not count (datatrove joins the words with '' here)."""
    seen: set[str] = set()
    chars = i = 0
    while i < len(ngrams):
        if ngrams[i] in seen:
            chars += len(ngrams[i]) - (n - 1)
            i += n
        else:
            seen.add(ngrams[i])
            i += 1
    return chars


def gopher_repetition(text: str, cfg: GopherRepetitionConfig) -> str | None:
    paragraphs = PARAGRAPH_SPLIT_RE.split(text.strip())
    dup_paragraphs, dup_chars = find_duplicates(paragraphs)
    if cfg.dup_para_frac and dup_paragraphs / len(paragraphs) > cfg.dup_para_frac:
        return "dup_para_frac"
    if cfg.dup_para_char_frac and dup_chars / len(text) > cfg.dup_para_char_frac:
        return "dup_para_char_frac"
    lines = LINE_SPLIT_RE.split(text)
    dup_lines, dup_chars = find_duplicates(lines)
    if cfg.dup_line_frac and dup_lines / len(lines) > cfg.dup_line_frac:
        return "dup_line_frac"
    if cfg.dup_line_char_frac and dup_chars / len(text) > cfg.dup_line_char_frac:
        return "dup_line_char_frac"
    words = split_words(text)
    for n in (2, 3, 4):
        limit = getattr(cfg, f"top_{n}gram_char_frac")
        ngrams = _ngrams(words, n)
        if limit and ngrams and _top_ngram_chars(ngrams) / len(text) > limit:
            return f"top_{n}gram"
    for n in range(5, 11):
        limit = getattr(cfg, f"dup_{n}gram_char_frac")
        ngrams = _ngrams(words, n)
        if limit and ngrams and _duplicated_ngram_chars(ngrams, n) / len(text) > limit:
            return f"dup_{n}gram"
    return None


def gopher_quality(text: str, cfg: GopherQualityConfig) -> str | None:
    # Gopher states every rule in words (Rae et al. 2021, appendix A.1.1), and a punctuation token is no word: a
    # word here is a token with a letter or digit. datatrove counts words so for the length rules but divides the
    # symbol and alphabetic ratios by all tokens, punctuation included, which scores prose with many commas and
    # quotes as having few alphabetic words.
    tokens = split_words(text)
    words = [w for w in tokens if any(c.isalnum() for c in w)]
    if len(words) < max(cfg.min_doc_words, 1):
        return "too_few_words"
    if cfg.max_doc_words and len(words) > cfg.max_doc_words:
        return "too_many_words"
    mean_length = sum(map(len, words)) / len(words)
    if cfg.min_avg_word_length and mean_length < cfg.min_avg_word_length:
        return "short_mean_word"
    if cfg.max_avg_word_length and mean_length > cfg.max_avg_word_length:
        return "long_mean_word"
    if cfg.max_symbol_word_ratio and text.count("#") / len(words) > cfg.max_symbol_word_ratio:
        return "hash_ratio"
    if cfg.max_symbol_word_ratio and (text.count("...") + text.count("…")) / len(words) > cfg.max_symbol_word_ratio:
        return "ellipsis_ratio"
    lines = text.splitlines()
    bullets = sum(line.lstrip().startswith(GOPHER_BULLETS) for line in lines)
    if cfg.max_bullet_lines_ratio and bullets / len(lines) > cfg.max_bullet_lines_ratio:
        return "bullet_lines"
    ellipsis_lines = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    if cfg.max_ellipsis_lines_ratio and ellipsis_lines / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "ellipsis_lines"
    alpha_words = sum(any(c.isalpha() for c in w) for w in words)
    if cfg.min_alpha_words_ratio and alpha_words / len(words) < cfg.min_alpha_words_ratio:
        return "few_alpha_words"
    # "the English words" of the paper: compared lower-cased (datatrove compares as is, so 'The' would not count)
    stop_words = set(cfg.stop_words)
    if cfg.min_stop_words and sum(w.lower() in stop_words for w in words) < cfg.min_stop_words:
        return "few_stop_words"
    return None


def c4(text: str, cfg: C4Config) -> tuple[str | None, str]:
    """(rule that removes the document or None, the text keeping only the lines that pass the line rules)."""
    kept, sentences = [], 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if cfg.max_word_length and any(len(w) > cfg.max_word_length for w in words):
            continue
        if cfg.remove_citations:
            line = CITATION_RE.sub("", line)
        if cfg.filter_no_terminal_punct and (not line.endswith(C4_END_PUNCTUATION) or line.endswith("...")):
            continue
        # words counted with the citations gone, as in TFDS c4_utils (datatrove counts them before)
        if len(line.split()) < cfg.min_words_per_line:
            continue
        lowered = line.lower()
        if cfg.filter_lorem_ipsum and "lorem ipsum" in lowered:
            return "lorem_ipsum", text
        if cfg.filter_javascript and "javascript" in lowered:
            continue
        if cfg.filter_curly_bracket and "{" in line:
            return "curly_bracket", text
        if cfg.filter_policy and any(p in lowered for p in C4_POLICY_SUBSTRINGS):
            continue
        sentences += len(SENTENCE_END_RE.findall(line)) + (not line.endswith((".", "!", "?")))
        kept.append(line)
    if sentences < cfg.min_num_sentences:
        return "too_few_sentences", text
    return None, "\n".join(kept).strip()


def fineweb(text: str, cfg: FineWebConfig) -> str | None:
    # datatrove's comparisons, inclusive where it is (<= and >=); blank lines count as lines in the two line ratios
    # (C4 before it has already dropped them in the pipeline) but not among duplicated lines.
    lines = text.split("\n")
    if (
        cfg.line_punct_thr
        and sum(line.endswith(FINEWEB_STOP_CHARS) for line in lines) / len(lines) <= cfg.line_punct_thr
    ):
        return "line_punct_ratio"
    if (
        cfg.short_line_thr
        and sum(len(line) <= cfg.short_line_length for line in lines) / len(lines) >= cfg.short_line_thr
    ):
        return "short_line_ratio"
    non_empty = [line for line in lines if line.strip()]
    if (
        cfg.char_duplicates_ratio
        and find_duplicates(non_empty)[1] / max(len(text.replace("\n", "")), 1) >= cfg.char_duplicates_ratio
    ):
        return "char_dup_ratio"
    if cfg.new_line_ratio and text.count("\n") / max(len(split_words(text)), 1) > cfg.new_line_ratio:
        return "list_ratio"
    return None
