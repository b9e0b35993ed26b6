"""Fold lines longer than the SMTP limit before they go out (RFC 5321 4.5.3.1.6).

Legacy applications send an HTML body as one line of 2,000 to 50,000 octets; a receiving
server that enforces the limit of 998 octets (plus CRLF) refuses the whole message with
``500 Line too long``. Postfix breaks such lines on output (``smtp_line_length_limit =
998``: "Longer lines are broken by inserting <CR><LF><SPACE>"); this module does the same
with one refinement: where the line has a space or tab within the limit, the break is made
just before the last one (RFC 5322 2.2.3 folding), so nothing is inserted but the CRLF,
words and HTML tokens stay whole, and a folded header unfolds to exactly the original.
Only a stretch of more than the limit without white space is cut Postfix's way, at the
limit, continuing with an inserted space (and never inside a UTF-8 sequence; a stretch of
nothing but white space is cut without one, as it starts the continuation). Either way
every continuation line starts with a space or a tab, so a fold never creates a line
starting with "." or a line that ends the DATA: dot-stuffing after folding stays correct.

Headers and body get the same rule: in a header it is ordinary folding, in a body the
break is visible (a line break; for a hard cut also a space), as it is with Postfix.
Quoted-printable and base64 lines are at most 76 octets and are never touched.

The message is expected CRLF-clean (the spool's form); lines are found by LF. Messages
without a long line cost one ``rfind`` per ``limit`` octets and are returned as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

# Below this a piece could be left no room after the inserted space and a UTF-8 back-up
# (the configuration asks for at least 78).
MIN_LIMIT = 8
_WSP = b" \t"


@dataclass(frozen=True, slots=True)
class Folded:
    data: bytes
    lines: int = 0  # how many lines were longer than the limit
    longest: int = 0  # the longest of them, in octets without CRLF


def fold(data: bytes, limit: int) -> Folded:
    """``data`` with every line over ``limit`` octets folded; ``limit`` 0 turns it off."""
    if limit <= 0:
        return Folded(data)
    start = _next_long_line(data, limit, 0)
    if start < 0:
        return Folded(data)  # the common case: nothing copied
    if limit < MIN_LIMIT:
        raise ValueError(f"line length limit {limit} is below {MIN_LIMIT}")
    out: list[bytes] = []
    copied = count = longest = 0
    while start >= 0:
        lf = data.find(b"\n", start)
        if lf < 0:  # the last line, without a line ending
            end = next_start = len(data)
        else:
            end = lf - 1 if data[lf - 1 : lf] == b"\r" else lf
            next_start = lf + 1
        out.append(data[copied:start])
        out.append(b"\r\n".join(fold_line(data[start:end], limit)))
        count += 1
        longest = max(longest, end - start)
        copied = end  # the line ending is copied with the next stretch
        start = _next_long_line(data, limit, next_start)
    out.append(data[copied:])
    return Folded(b"".join(out), count, longest)


def _next_long_line(data: bytes, limit: int, pos: int) -> int:
    """Start of the first line at or after ``pos`` (a line start) that is over ``limit``.

    A window of ``limit + 2`` octets (the line, CR, LF) holding an LF proves every line
    ending in it short, and the search goes on after its last LF: two ``rfind`` calls at
    most per ``limit`` octets, however many short lines there are. -1: none.
    """
    end = len(data)
    span = limit + 2
    while end - pos > limit:
        lf = data.rfind(b"\n", pos, pos + span)
        if lf < 0:
            return pos
        pos = lf + 1
    return -1


def fold_line(line: bytes, limit: int) -> list[bytes]:
    """The pieces of one line (no CRLF) of more than ``limit`` octets, each at most ``limit``.

    Joined with CRLF they make the folded line. Removing each CRLF before a tab or space
    that was in the line, and each CRLF + SP that was inserted, restores ``line``.
    """
    pieces: list[bytes] = []
    pos, end = 0, len(line)
    # A line starting with "." is sent with one more (dot-stuffing): keep room for it.
    budget = limit - 1 if line[:1] == b"." else limit
    lead = b""  # b" " after a cut Postfix's way: the inserted space of the continuation
    while end - pos > budget:
        stop = pos + budget  # a break at ``stop`` leaves exactly ``budget`` octets
        first = pos
        while first < end and line[first] in _WSP:
            first += 1
        # A piece must hold more than white space (RFC 5322 forbids blank continuation
        # lines): only white space after its first other octet is a place to break.
        cut = max(line.rfind(b" ", first + 1, stop + 1), line.rfind(b"\t", first + 1, stop + 1))
        if cut > pos:
            pieces.append(lead + line[pos:cut])
            lead, pos, budget = b"", cut, limit
            continue
        cut = stop
        for _ in range(3):  # not inside a UTF-8 sequence: back up to its first octet
            if 0x80 <= line[cut] < 0xC0 and cut - 1 > pos:
                cut -= 1
            else:
                break
        pieces.append(lead + line[pos:cut])
        if line[cut] in _WSP:  # only white space so far: it starts the continuation
            lead, pos, budget = b"", cut, limit
        else:
            lead, pos, budget = b" ", cut, limit - 1
    pieces.append(lead + line[pos:])
    return pieces
