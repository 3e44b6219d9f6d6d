"""Quality filters for prose: Gopher repetition and quality rules, C4 line filters, FineWeb's additions.

Each follows datatrove's implementation of the published rule (same order of checks, same comparisons), so a
threshold means what the paper and datatrove say it means. Each returns the name of the rule that removes the
document, or None to keep it; `c4` also returns the text with its rejected lines dropped. Not for source code:
see filters_code.
"""

from __future__ import annotations

import re
from collections import Counter

from jaxllm.config.clean import C4Config, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig

# datatrove splits words with NLTK's tokenizer, which makes punctuation runs separate tokens; this regex does the
# same without the dependency (words keep inner apostrophes and hyphens: "don't", "well-known").
WORD_RE = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]+")
PARAGRAPH_SPLIT_RE = re.compile(r"\n{2,}")
LINE_SPLIT_RE = re.compile(r"\n+")  # blank lines are not lines (else they would all count as duplicates)
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
    """Characters in n-grams seen before, skipping past each repeat so overlapping repeats count once."""
    seen: set[str] = set()
    chars = i = 0
    while i < len(ngrams):
        if ngrams[i] in seen:
            chars += len(ngrams[i])
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
    words = split_words(text)
    # Length rules count words proper; the ratio rules divide by all tokens, punctuation included, as datatrove does.
    real_words = [w for w in words if any(c.isalnum() for c in w)]
    if len(real_words) < max(cfg.min_doc_words, 1):
        return "too_few_words"
    if cfg.max_doc_words and len(real_words) > cfg.max_doc_words:
        return "too_many_words"
    mean_length = sum(map(len, real_words)) / len(real_words)
    if cfg.min_avg_word_length and mean_length < cfg.min_avg_word_length:
        return "short_mean_word"
    if cfg.max_avg_word_length and mean_length > cfg.max_avg_word_length:
        return "long_mean_word"
    if cfg.max_symbol_word_ratio and text.count("#") / len(words) > cfg.max_symbol_word_ratio:
        return "hash_ratio"
    if cfg.max_symbol_word_ratio and (text.count("...") + text.count("…")) / len(words) > cfg.max_symbol_word_ratio:
        return "ellipsis_ratio"
    lines = text.splitlines()
    bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
    if cfg.max_bullet_lines_ratio and bullets / len(lines) > cfg.max_bullet_lines_ratio:
        return "bullet_lines"
    ellipsis_lines = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    if cfg.max_ellipsis_lines_ratio and ellipsis_lines / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "ellipsis_lines"
    alpha_words = sum(any(c.isalpha() for c in w) for w in words)
    if cfg.max_non_alpha_words_ratio and alpha_words / len(words) < cfg.max_non_alpha_words_ratio:
        return "few_alpha_words"
    stop_words = set(cfg.stop_words)  # compared lower-cased (datatrove compares as is), so 'The' counts
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
        if len(words) < cfg.min_words_per_line:
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
        # NLTK's sentence splitter in datatrove; a line without end punctuation still counts as one sentence.
        sentences += max(1, len(SENTENCE_END_RE.findall(line)))
        kept.append(line)
    if sentences < cfg.min_num_sentences:
        return "too_few_sentences", text
    return None, "\n".join(kept).strip()


def fineweb(text: str, cfg: FineWebConfig) -> str | None:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "empty"
    if sum(line.endswith(FINEWEB_STOP_CHARS) for line in lines) / len(lines) < cfg.line_punct_thr:
        return "line_punct_ratio"
    if sum(len(line) <= cfg.short_line_length for line in lines) / len(lines) > cfg.short_line_thr:
        return "short_line_ratio"
    if (
        cfg.char_duplicates_ratio
        and find_duplicates(lines)[1] / len(text.replace("\n", "")) > cfg.char_duplicates_ratio
    ):
        return "char_dup_ratio"
    if cfg.new_line_ratio and text.count("\n") / max(len(split_words(text)), 1) > cfg.new_line_ratio:
        return "list_ratio"
    return None
