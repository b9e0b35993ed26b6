"""Header fields of a delivery status notification, as bytes: one line per value
(control characters become spaces, so a remote reply cannot add header lines), folded at
78 characters where possible and never above 998 bytes, and the deterministic MIME
boundary. :mod:`smtprelay.bounce` composes the notice with these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, parseaddr

CRLF = b"\r\n"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_BCHARS = re.compile(r"[^0-9A-Za-z'()+_,\-./:=?]")

# RFC 5322: lines of at most 78 characters where possible, never above 998 bytes. A word
# longer than _HARD_WRAP bytes (never an SMTP address or reply, both far shorter) is cut,
# which adds a space where it is cut when the field is unfolded.
_SOFT_WRAP = 78
_HARD_WRAP = 900


def field(name: str, value: str) -> bytes:
    """One header field, folded at spaces; the value can never contain CR or LF."""
    lines: list[str] = []
    current = f"{name}:"
    for word in one_line(value).split(" "):
        for piece in cut(word, _HARD_WRAP):
            if current != f"{name}:" and len(current) + 1 + len(piece) > _SOFT_WRAP:
                lines.append(current)
                current = ""
            current += " " + piece
    lines.append(current)
    return "\r\n".join(lines).encode("utf-8", "replace") + CRLF


def cut(word: str, limit: int) -> list[str]:
    """``word`` in pieces of at most ``limit`` UTF-8 bytes, cut between characters."""
    data = word.encode("utf-8", "replace")
    pieces: list[str] = []
    start = 0
    while len(data) - start > limit:
        end = start + limit
        while data[end] & 0xC0 == 0x80:  # never inside a multi-byte character
            end -= 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    pieces.append(data[start:].decode("utf-8"))
    return pieces


def one_line(text: str) -> str:
    """Control characters (CR, LF, NUL, ...) become spaces; runs of space collapse."""
    return " ".join(_CONTROL.sub(" ", text).split())


def ascii_text(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC).replace(microsecond=0))


def from_header(value: str) -> str:
    """``From:`` as configured; a non-ASCII display name is RFC 2047 encoded."""
    value = one_line(value)
    name, address = parseaddr(value)
    if not address or name.isascii():
        return value
    return f"{Header(name, 'utf-8').encode(maxlinelen=998)} <{address}>"


def bchars(text: str | None) -> str:
    return _NOT_BCHARS.sub("", text or "").replace("=", "").replace("?", "")


def boundary(qid: str | None, now: float, host: str, parts: Sequence[bytes]) -> bytes:
    """A deterministic boundary (``QID.time/host``, as Postfix does) found in no part."""
    base = f"{bchars(qid) or 'DSN'}.{int(now)}/{bchars(host)}"[:60]
    candidate, n = base, 0
    while any(b"--" + candidate.encode() in part for part in parts):
        n += 1
        candidate = f"{base}={n}"
    return candidate.encode("ascii")
