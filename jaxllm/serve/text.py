"""A reply's text as its tokens arrive: pieces that decode to whole characters, and the first stop string."""

from __future__ import annotations

from jaxllm.tokenizer import Tokenizer


class TextStream:
    """push(token) -> (new text, stopped). Text that could be the start of a stop string is held back until the
    next tokens tell; the reply ends before the first stop string, which is not sent. flush() gives what is held
    back when the reply ends otherwise."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far
        self.sent = 0  # characters of it passed on

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)  # the whole reply: a piece alone can be half a UTF-8 character
        if text.endswith("\ufffd"):
            return "", False
        self.text = text
        found = [i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stop) if i >= 0]
        if found:
            end = min(found)
            piece, self.sent = text[self.sent : end], end
            return piece, True
        held = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        end = max(self.sent, len(text) - held)
        piece, self.sent = text[self.sent : end], end
        return piece, False

    def flush(self) -> str:
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece
