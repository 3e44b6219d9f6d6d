"""The URL blocklist filter: removes a crawled document by its URL alone, before its text is looked at.

The rules and their order are datatrove's URLFilter (`filters/url_filter.py`), as FineWeb ran it: a blocked domain,
a banned word of the URL, enough soft-banned words, a banned subword anywhere in it. A domain blocks its subdomains
too (datatrove compares registered domains; comparing suffixes needs no public-suffix list). Documents without a
URL (local files, code) are not this filter's business: the caller passes them.
"""

from __future__ import annotations

import re
import urllib.parse

from jaxllm.config.clean import UrlFilterConfig

NON_ALNUM = re.compile(r"[^a-z0-9]+")


def url_filter(url: str, cfg: UrlFilterConfig) -> str | None:
    """The rule that removes the document at url ('blocked_domain', 'banned_word', 'soft_banned_words',
    'banned_subword'), or None when it stays."""
    lowered = url.lower()
    host = urllib.parse.urlsplit(lowered if "//" in lowered else "//" + lowered).hostname or ""
    if any(host == domain or host.endswith("." + domain) for domain in cfg.blocked_domains):
        return "blocked_domain"
    words = set(NON_ALNUM.split(lowered))
    if any(word in words for word in cfg.banned_words):
        return "banned_word"
    if cfg.soft_word_threshold and sum(word in words for word in cfg.soft_banned_words) >= cfg.soft_word_threshold:
        return "soft_banned_words"
    letters_and_digits = NON_ALNUM.sub("", lowered)
    if any(subword in letters_and_digits for subword in cfg.banned_subwords):
        return "banned_subword"
    return None
