"""PII scrubbing: e-mail addresses, public IP addresses and phone numbers become placeholders, counted per kind.

Patterns are regexes tuned to miss look-alikes common in code and docs: decorators and `user@host` without a
domain, version strings and private or documentation addresses (only globally routable IPs are personal, as in
FineWeb), dates, times and plain long integers. Not a named-entity recogniser: names and street addresses stay.
"""

from __future__ import annotations

import ipaddress
import re

from jaxllm.config.clean import PIIConfig

# Each pattern consumes its first character before looking behind it ("not inside a longer token"): a pattern that
# starts with a character class lets the regex engine skip ahead in C.
EMAIL_RE = re.compile(r"[A-Za-z0-9](?<![\w.+-].)[A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
# Addresses at the reserved example domains (RFC 2606) are placeholders already.
EXAMPLE_DOMAIN_RE = re.compile(r"@(?:[\w-]+\.)*example\.(?:com|org|net)$", re.IGNORECASE)
IPV4_RE = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?!\w|\.\d)")
IPV6_RE = re.compile(r"[0-9A-Fa-f:](?<![\w:].)[0-9A-Fa-f]{0,3}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
# 10 to 15 digits in groups: an area code (2-4 digits, or in parentheses) and two groups of 3-4 digits, with an
# optional +country code. Dates (2024-01-15) and versions (3.11.7) have too few digits. Space-separated groups count
# only after a +country code or a parenthesised area code: bare, "256 512 1024" (a list of numbers) looks exactly
# like "555 123 4567", so bare groups need one repeated hyphen or dot (555-123-4567, 555.123.4567). A match inside a
# longer run of number groups ("1024 2048 4096 8192") is not a phone number either.
PHONE_RE = re.compile(
    r"(?<![\w+.-])(?<!\d )"
    r"(?:\+\d{1,3}[ .-]?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}"  # +country code: any separators
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"  # (area code)
    r"|\d{2,4}(?P<sep>[.-])\d{3,4}(?P=sep)\d{3,4})"  # bare: one repeated separator
    r"(?![\w]|[ .-]\d)"
)


def _is_public_ip(candidate: str) -> bool:
    if ":" in candidate and sum(1 for group in candidate.split(":") if group) < 3:
        return False  # Python slices such as x[::2] parse as IPv6 addresses
    try:
        return ipaddress.ip_address(candidate).is_global
    except ValueError:
        return False


def scrub(text: str, cfg: PIIConfig) -> tuple[str, dict[str, int]]:
    """(text with placeholders, {'email': n, 'ip': n, 'phone': n} replacements made)."""
    counts = {"email": 0, "ip": 0, "phone": 0}

    def replace(kind: str, placeholder: str, keep=lambda s: False):
        def substitute(match: re.Match) -> str:
            if keep(match.group()):
                return match.group()
            counts[kind] += 1
            return placeholder

        return substitute

    if cfg.emails and "@" in text:
        text = EMAIL_RE.sub(replace("email", cfg.email_placeholder, EXAMPLE_DOMAIN_RE.search), text)
    if cfg.ips:
        for pattern in (IPV4_RE, IPV6_RE):
            text = pattern.sub(replace("ip", cfg.ip_placeholder, lambda s: not _is_public_ip(s)), text)
    if cfg.phones:
        text = PHONE_RE.sub(
            replace("phone", cfg.phone_placeholder, lambda s: not 10 <= sum(c.isdigit() for c in s) <= 15), text
        )
    return text, counts
