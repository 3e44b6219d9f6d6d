"""Each cleaning rule on hand-made documents just inside and just outside its published threshold."""

from __future__ import annotations

import dataclasses

import pytest

from jaxllm.config.clean import (
    C4Config,
    CodeConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    NormalizeConfig,
)
from jaxllm.data.clean import normalize
from jaxllm.data.filters_code import code_profile
from jaxllm.data.filters_prose import c4, fineweb, gopher_quality, gopher_repetition, split_words

# 10 distinct words, mean length 4.6, two stop words: passes every Gopher quality rule once repeated to 50 words.
WORDS = "the cat sat with many other small animals near trees".split()


def words(n: int, vocab=WORDS) -> str:
    return " ".join(vocab[i % len(vocab)] for i in range(n)) + "."


def unique_words(n: int) -> list[str]:
    return [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}x" for i in range(n)]  # 'waax', 'wabx', ... 4 letters


def test_normalize_unicode_and_control_characters():
    text = "\ufeffcafe\u0301\r\nline\x00two\x0c\rend\ttab"
    assert normalize(text, NormalizeConfig()) == "caf\u00e9\nlinetwo\nend\ttab"
    assert normalize("\uff21", NormalizeConfig(unicode_form="NFKC")) == "A"
    assert normalize("\uff21", NormalizeConfig()) == "\uff21"


def test_split_words_keeps_punctuation_runs_and_inner_apostrophes():
    assert split_words("Don't stop... well-known #tag!") == ["Don't", "stop", "...", "well-known", "#", "tag", "!"]


class TestGopherQuality:
    cfg = GopherQualityConfig()

    def test_word_count_bounds(self):
        assert gopher_quality(words(50), self.cfg) is None
        assert gopher_quality(words(49), self.cfg) == "too_few_words"
        assert gopher_quality(words(60), dataclasses.replace(self.cfg, max_doc_words=59)) == "too_many_words"

    def test_mean_word_length(self):
        short = " ".join(["the", "an", "to"] * 20)  # mean 2.33
        assert gopher_quality(short, self.cfg) == "short_mean_word"
        long_vocab = ["the", "and"] + ["extraordinarily"] * 8  # mean (3+3+8*15)/10 = 12.6
        assert gopher_quality(words(60, long_vocab), self.cfg) == "long_mean_word"

    def test_hash_and_ellipsis_ratios(self):
        base = words(59)  # 59 words + '.' = 60 tokens
        assert gopher_quality(base + " #" * 6, self.cfg) is None  # 6 / 66 tokens
        assert gopher_quality(base + " #" * 8, self.cfg) == "hash_ratio"  # 8 / 68 > 0.1
        assert gopher_quality(base + " …" * 8, self.cfg) == "ellipsis_ratio"

    def test_bullet_and_ellipsis_lines(self):
        lines = [f"- {words(12)}" for _ in range(9)] + [words(12)]
        assert gopher_quality("\n".join(lines), self.cfg) is None  # 9 of 10 bullet lines: not above 0.9
        lines = [f"• {words(12)}" for _ in range(10)]
        assert gopher_quality("\n".join(lines), self.cfg) == "bullet_lines"
        lines = [words(8)[:-1] + "..." for _ in range(2)] + [words(8)] * 5  # 2 of 7 lines: 0.29
        assert gopher_quality("\n".join(lines), dataclasses.replace(self.cfg, max_symbol_word_ratio=0)) is None
        lines = [words(8)[:-1] + "..." for _ in range(3)] + [words(8)] * 5  # 3 of 8: 0.375
        assert (
            gopher_quality("\n".join(lines), dataclasses.replace(self.cfg, max_symbol_word_ratio=0)) == "ellipsis_lines"
        )

    def test_alphabetic_words_and_stop_words(self):
        numbers = [str(1000 + i) for i in range(14)]  # words without letters
        # 59 words with letters of 60 tokens, plus 13 or 14 numbers: 59/73 = 0.808, 59/74 = 0.797
        assert gopher_quality(words(59) + " " + " ".join(numbers[:13]), self.cfg) is None
        assert gopher_quality(words(59) + " " + " ".join(numbers), self.cfg) == "few_alpha_words"
        no_stop = ["quick", "brown", "foxes", "jumped", "over", "lazy", "dogs", "quietly"]
        assert gopher_quality(words(60, no_stop), self.cfg) == "few_stop_words"
        assert gopher_quality(words(60, no_stop) + " The end and", self.cfg) is None


class TestGopherRepetition:
    cfg = GopherRepetitionConfig()

    def test_clean_text_passes(self):
        assert gopher_repetition(" ".join(unique_words(200)), self.cfg) is None

    def test_duplicate_paragraphs_and_lines(self):
        blocks = [" ".join(unique_words(300)[i * 30 : (i + 1) * 30]) for i in range(10)]  # 149 characters each
        assert gopher_repetition("\n\n".join(blocks[:9] + blocks[:1]), self.cfg) is None  # 1 of 10 repeated
        assert gopher_repetition("\n\n".join(blocks[:6] + blocks[:4]), self.cfg) == "dup_para_frac"  # 4 of 10
        # 3 of 11 paragraphs (0.27) but 447 of 1659 characters (0.27 > 0.2)
        assert gopher_repetition("\n\n".join(blocks[:8] + blocks[:3]), self.cfg) == "dup_para_char_frac"
        assert gopher_repetition("\n".join(blocks[:6] + blocks[:4]), self.cfg) == "dup_line_frac"
        assert gopher_repetition("\n".join(blocks[:8] + blocks[:3]), self.cfg) == "dup_line_char_frac"

    def test_top_ngram(self):
        vocab = unique_words(400)
        # the bigram 'waax wabx' before each of 30 other words: 30 * 9 of 449 characters
        assert gopher_repetition(" ".join(f"waax wabx {w}" for w in vocab[2:32]), self.cfg) == "top_2gram"
        # before every 30th of 300 words: 10 * 9 of 1599 characters
        text = " ".join(("waax wabx " if i % 30 == 0 else "") + w for i, w in enumerate(vocab[2:302]))
        assert gopher_repetition(text, self.cfg) is None

    def test_duplicated_ngrams(self):
        vocab = unique_words(400)
        passage = " ".join(vocab[:10])
        # one 10-word passage repeated once within 300 other words: 49 / 1560 chars of duplicated 10-grams
        assert gopher_repetition(" ".join(vocab[10:310]) + " " + passage + " " + passage, self.cfg) is None
        text = " ".join(vocab[10:60]) + " " + " ".join([passage] * 3)
        assert gopher_repetition(text, self.cfg) == "dup_5gram"


class TestC4:
    cfg = C4Config()

    def test_line_rules_drop_lines_and_keep_the_document(self):
        text = "\n".join(
            [
                "This line is fine. So is this one.",
                "Two words",  # fewer than 3 words: dropped
                "Please enable JavaScript to view this page.",  # javascript: dropped
                "We use cookies to improve your experience.",  # policy: dropped
                "The third sentence is here [1]. And a fourth one! And the fifth?",
            ]
        )
        rule, kept = c4(text, self.cfg)
        assert rule is None
        assert (
            kept == "This line is fine. So is this one.\nThe third sentence is here . And a fourth one! And the fifth?"
        )

    def test_document_rules(self):
        five = "One two three. Four five six. Seven eight nine. Ten eleven twelve. Thirteen fourteen fifteen."
        assert c4(five, self.cfg)[0] is None
        assert c4(five.rsplit(" ", 3)[0], self.cfg)[0] == "too_few_sentences"  # four sentences and a fragment
        assert c4(five + "\nLorem ipsum dolor sit amet.", self.cfg)[0] == "lorem_ipsum"
        assert c4(five + "\nuse a dict like {a: 1} here", self.cfg)[0] == "curly_bracket"

    def test_terminal_punctuation_is_fineweb_off_and_c4_on(self):
        text = "\n".join(["no end punctuation here at all"] * 5 + ["But this one ends."])
        assert c4(text, self.cfg)[0] is None
        assert c4(text, dataclasses.replace(self.cfg, filter_no_terminal_punct=True))[0] == "too_few_sentences"

    def test_long_word_drops_line(self):
        text = "a b " + "x" * 1001 + " end.\n" + "One two three. Four five six. Seven eight nine. Ten. Eleven."
        rule, kept = c4(text, self.cfg)
        assert (rule, kept) == (None, "One two three. Four five six. Seven eight nine. Ten. Eleven.")


class TestFineWeb:
    cfg = FineWebConfig()

    def line(self, i: int, end: str = ".") -> str:
        return " ".join(unique_words(200)[i * 8 : (i + 1) * 8]) + end  # 47-48 characters

    def test_passes(self):
        assert fineweb("\n".join(self.line(i) for i in range(10)), self.cfg) is None

    def test_line_punctuation(self):
        lines = [self.line(i, "") for i in range(10)]
        assert fineweb("\n".join(lines), self.cfg) == "line_punct_ratio"  # 0 of 10
        lines[0] += "."
        lines[1] += "."
        assert fineweb("\n".join(lines), self.cfg) is None  # 2 of 10 = 0.2 >= 0.12

    def test_short_lines(self):
        lines = [self.line(i) for i in range(3)] + [f"short {i}." for i in range(7)]  # 7 of 10 short
        assert fineweb("\n".join(lines), self.cfg) == "short_line_ratio"
        lines = [self.line(i) for i in range(4)] + [f"short {i}." for i in range(6)]  # 6 of 10
        assert fineweb("\n".join(lines), self.cfg) is None

    def test_duplicate_line_characters(self):
        lines = [self.line(i) for i in range(20)]
        assert fineweb("\n".join(lines + lines[:1]), self.cfg) == "char_dup_ratio"  # 48/1008 > 0.01

    def test_list_ratio(self):
        text = "\n".join(f"{a} {b}." for a, b in zip(unique_words(40)[::2], unique_words(40)[1::2]))
        # 20 lines of 2 words and a period: 19 newlines / 60 tokens = 0.317 > 0.3 (short lines disabled here)
        assert fineweb(text, dataclasses.replace(self.cfg, short_line_thr=1.0)) == "list_ratio"
        text = "\n".join(f"{a} {b} c." for a, b in zip(unique_words(40)[::2], unique_words(40)[1::2]))
        assert fineweb(text, dataclasses.replace(self.cfg, short_line_thr=1.0)) is None


class TestCodeProfile:
    cfg = CodeConfig()

    def test_ordinary_code_passes(self):
        assert code_profile("def add(a, b):\n    return a + b\n", self.cfg) is None

    @pytest.mark.parametrize(
        "text, rule",
        [
            ("x = 1\n" + "y = '" + "a" * 996 + "'\n", "long_line"),  # 1001 characters
            ("\n".join(["value = " + "a" * 95] * 3), "long_mean_line"),  # 103 each
            ("\n".join(["    (0, 0, 0),"] * 20), "low_alphanum"),  # 3 of 15 characters
            ("# Auto-generated by tools/gen.py\nTABLE = {}\n", "autogenerated"),
            ("\n\n\n\n# This file was AUTOMATICALLY GENERATED\nx = 1\n", "autogenerated"),
        ],
    )
    def test_rules(self, text, rule):
        assert code_profile(text, self.cfg) == rule

    def test_thresholds_are_inclusive_limits(self):
        assert code_profile("y = '" + "a" * 994 + "'\n" + "x = 1\n" * 10, self.cfg) is None  # 1000 characters
        assert code_profile("\n" * 5 + "# autogenerated, but below the scanned lines\n", self.cfg) is None
