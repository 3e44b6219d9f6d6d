"""PII scrubbing: true positives become placeholders; look-alikes common in code and docs stay."""

from __future__ import annotations

import pytest

from jaxllm.config.clean import PIIConfig
from jaxllm.data.pii import scrub

CFG = PIIConfig()


@pytest.mark.parametrize(
    "text, expected, counts",
    [
        ("mail jane.doe+news@mail.example-corp.co.uk now", "mail <EMAIL> now", (1, 0, 0)),
        ("Author: Barry <barry@python.org>", "Author: Barry <<EMAIL>>", (1, 0, 0)),
        ("server at 8.8.8.8, backup 2606:4700:4700::1111.", "server at <IP>, backup <IP>.", (0, 2, 0)),
        ("call +1 (555) 123-4567 or 555.123.4567", "call <PHONE> or <PHONE>", (0, 0, 2)),
        ("UK office: +44 20 7946 0958", "UK office: <PHONE>", (0, 0, 1)),
        ("desk (212) 555 0199, cell 212-555-0142.", "desk <PHONE>, cell <PHONE>.", (0, 0, 2)),
    ],
)
def test_true_positives(text, expected, counts):
    out, found = scrub(text, CFG)
    assert out == expected
    assert (found["email"], found["ip"], found["phone"]) == counts


@pytest.mark.parametrize(
    "text",
    [
        "@property\ndef x(self): return a @ b",  # decorators and matrix products
        "user@localhost and someone@example.com",  # no domain; the reserved example domain
        "listen on 127.0.0.1, 10.0.0.1, 192.168.1.20 or 192.0.2.1",  # loopback, private, documentation addresses
        "version 3.11.7 released 2024-01-15 at 12:30:45",  # versions, dates, times
        "x[::2] and y[1:2:3] and ::1",  # slices and loopback IPv6
        "id 1234567890 and 999.999.999.999 and 1.2.3.4.5",  # a plain integer, not an address, too many parts
        "ranges 123 456 789 and 2001:db8::1",  # 9 digits; documentation IPv6
        "for n in 256 512 1024: sizes 1024 2048 4096 8192",  # lists of numbers, however many
        "card 4111 1111 1111 1111, ISBN 978 0306 4061, at 2024 1230 1145",  # space-separated, without + or ( )
        "mixed 555-123.4567 and run 555-123-4567-890",  # separators that differ; a longer run of groups
    ],
)
def test_look_alikes_stay(text):
    assert scrub(text, CFG) == (text, {"email": 0, "ip": 0, "phone": 0})


def test_kinds_can_be_switched_off_and_placeholders_changed():
    text = "a@b.org 8.8.8.8 555-123-4567"
    assert (
        scrub(text, PIIConfig(ips=False, phones=False, email_placeholder="[mail]"))[0] == "[mail] 8.8.8.8 555-123-4567"
    )
