"""Checks shared by the unit and integration tests of line folding (linefold.py)."""

from __future__ import annotations

_WSP = (b" ", b"\t")


def unfolds_to(received: bytes, original: bytes) -> bool:
    """True if ``received`` is ``original`` with long lines folded as documented.

    Each original line must come back as a prefix of it, then continuation lines that
    each start with a space or a tab: either white space that was in the line (a fold
    before it) or one inserted space (a cut where there was none). Nothing else may
    differ: no line dropped, added or changed.
    """
    got = received.split(b"\r\n")
    i = 0
    for line in original.split(b"\r\n"):
        if i >= len(got) or not line.startswith(got[i]):
            return False
        pos = len(got[i])
        i += 1
        while pos < len(line):
            if i >= len(got):
                return False
            piece = got[i]
            if piece[:1] in _WSP and line.startswith(piece, pos):
                pos += len(piece)
            elif piece[:1] == b" " and len(piece) > 1 and line.startswith(piece[1:], pos):
                pos += len(piece) - 1
            else:
                return False
            i += 1
    return i == len(got)


def longest_line(data: bytes) -> int:
    return max(len(line) for line in data.split(b"\r\n"))
