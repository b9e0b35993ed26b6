"""Addresses without a domain, qualified with ``[server] origin`` for local submissions
(Postfix's ``myorigin``): the envelope's MAIL FROM / RCPT TO paths and the address headers
of the message (``From: root (Cron Daemon)`` -> ``From: root@ORIGIN (Cron Daemon)``), as
Postfix's cleanup and Exim do. Comments, quoting, groups and folded lines are kept."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Headers whose addresses are qualified (Postfix's cleanup rewrites the same set).
ADDRESS_HEADERS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "apparently-to",
        "errors-to",
        "return-receipt-to",
        "disposition-notification-to",
        "resent-from",
        "resent-sender",
        "resent-reply-to",
        "resent-to",
        "resent-cc",
        "resent-bcc",
    }
)
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_SPECIALS = '()<>[]:;@\\,."'
# MAIL FROM:<addr> / RCPT TO:<addr>, or the same without brackets.
_COMMAND_PATH = re.compile(r"^(\s*(?:FROM|TO):\s*)(<[^<>]*>|[^\s<>]+)(.*)$", re.I | re.S)


def qualify_command(arg: str | None, origin: str) -> tuple[str | None, str | None]:
    """``FROM:<root> SIZE=9`` -> (``FROM:<root@ORIGIN> SIZE=9``, ``root``): the command
    argument with a domainless path qualified, and the path as given (None if none)."""
    match = _COMMAND_PATH.match(arg or "")
    if match is None:
        return arg, None
    head, path, rest = match.groups()
    bracketed = path.startswith("<")
    address = path[1:-1] if bracketed else path
    if not address or "@" in address or any(c.isspace() or c == '"' for c in address):
        return arg, address
    qualified = f"{address}@{origin}"
    return head + (f"<{qualified}>" if bracketed else qualified) + rest, address


def qualify_headers(raw: bytes, origin: str) -> bytes:
    """The message with ``@origin`` added to every domainless address in its address
    headers. Works on the bytes as received (line endings and dot-stuffing untouched:
    no header it changes can start with a dot), and leaves everything else as it was."""
    pos = 0
    fields: list[list[int]] = []  # [start, end] of each header field
    names: list[bytes] = []
    while (line := _LINE.match(raw, pos)) is not None and line.group(1):
        content = line.group(1)
        if content[:1] in (b" ", b"\t") and fields:
            fields[-1][1] = line.end()
        elif (named := _FIELD_NAME.match(content)) is not None:
            fields.append([pos, line.end()])
            names.append(named.group(1).lower())
        else:
            break  # not a header: the body starts here (no empty line)
        pos = line.end()
    out: list[bytes] = []
    done = 0
    for (start, end), name in zip(fields, names, strict=True):
        if name.decode("ascii") not in ADDRESS_HEADERS:
            continue
        text = raw[start:end].decode("utf-8", "surrogateescape")
        label, colon, value = text.partition(":")
        new = qualify_address_list(value, origin)
        if new != value:
            out += [raw[done:start], (label + colon + new).encode("utf-8", "surrogateescape")]
            done = end
    if not out:
        return raw
    out.append(raw[done:])
    return b"".join(out)


@dataclass
class _Token:
    kind: str  # "word", "dot", "at", "space"
    start: int
    end: int


def qualify_address_list(value: str, origin: str) -> str:
    """An RFC 5322 address list with ``@origin`` after every local part that has no
    domain: ``root (Cron Daemon)`` -> ``root@origin (Cron Daemon)``, ``Bob <bob>`` ->
    ``Bob <bob@origin>``. Comments, quoting, folding and groups stay as they were; a
    phrase that is not an address (``Cron Daemon``) and anything malformed is left."""
    inserts: list[int] = []
    tokens: list[_Token] = []
    angle = False  # the current address had an <angle-addr>

    def finish() -> None:
        nonlocal angle
        if not angle:
            end = _local_part_end(tokens)
            if end is not None:
                inserts.append(end)
        tokens.clear()
        angle = False

    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            j = _skip_quoted(value, i)
            tokens.append(_Token("word", i, j))
        elif c == "(":
            j = _skip_comment(value, i)
        elif c == "<":
            j = value.find(">", i)
            if j < 0:
                return value  # malformed: leave it alone
            inner = value[i + 1 : j].strip()
            if (
                inner
                and "@" not in inner
                and ":" not in inner
                and not any(ch.isspace() or ch in '"\\()<,;' for ch in inner)
            ):
                inserts.append(i + 1 + len(value[i + 1 : j].rstrip()))
            angle = True
            j += 1
        elif c in ",;":
            finish()
            j = i + 1
        elif c == ":":  # "Group name:" -- what came before was the group's name
            tokens.clear()
            angle = False
            j = i + 1
        elif c in "@.":
            tokens.append(_Token("at" if c == "@" else "dot", i, i + 1))
            j = i + 1
        elif c.isspace():
            j = i + 1
            while j < n and value[j].isspace():
                j += 1
            tokens.append(_Token("space", i, j))
        else:
            j = i + 1
            while j < n and not value[j].isspace() and value[j] not in _SPECIALS:
                j += 1
            tokens.append(_Token("word", i, j))
        i = j
    finish()
    for at in sorted(inserts, reverse=True):
        value = f"{value[:at]}@{origin}{value[at:]}"
    return value


def _local_part_end(tokens: list[_Token]) -> int | None:
    """Where a bare ``word(.word)*`` address without ``@`` ends; None if it is not one
    (two words with only a space between them are a phrase, not an address)."""
    seq = list(tokens)
    while seq and seq[0].kind == "space":
        seq.pop(0)
    while seq and seq[-1].kind == "space":
        seq.pop()
    kept = [
        t
        for k, t in enumerate(seq)
        if not (t.kind == "space" and "dot" in (seq[k - 1].kind, seq[k + 1].kind))
    ]
    kinds = [t.kind for t in kept]
    if not kinds or kinds != ["word", *["dot", "word"] * ((len(kinds) - 1) // 2)]:
        return None
    return kept[-1].end


def _skip_quoted(text: str, i: int) -> int:
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == '"':
            return j + 1
        else:
            j += 1
    return len(text)


def _skip_comment(text: str, i: int) -> int:
    depth, j = 0, i
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return len(text)


# --- the caller ------------------------------------------------------------------------------
