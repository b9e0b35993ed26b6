"""Turn the bytes received after DATA into the bytes the spool keeps.

Three jobs, all on the whole message at C speed rather than line by line:
undo dot-stuffing (RFC 5321 4.5.2), make every line end in CRLF (a bare CR or LF is how
SMTP smuggling hides a second message; normalised, nothing downstream can read the
message differently), and prepend the trace and missing origin headers.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import datetime
from email.utils import format_datetime
from typing import NamedTuple

_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_HEADER_END = b"\r\n\r\n"
# A header's value runs on over folded lines (CRLF followed by a space or tab).
_MESSAGE_ID = re.compile(
    rb"^message-id:((?:[^\r\n]*)(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)
_DATE = re.compile(rb"^date:", re.IGNORECASE | re.MULTILINE)


def normalize(raw: bytes) -> tuple[bytes, int]:
    """Bare CR/LF -> CRLF, then remove the leading dot of every line that has one.

    ``raw`` is everything between the DATA reply and the terminating ``.CRLF``.
    Returns the message and how many bare line endings were rewritten.
    """
    bare = 0
    # Three C scans (the one-byte counts are cheap, the CRLF count is not, so it runs
    # only when they agree); the regex only runs on the rare message that needs it.
    lf = raw.count(b"\n")
    if lf != raw.count(b"\r") or lf != raw.count(b"\r\n"):
        raw, bare = _BARE_NEWLINE.subn(b"\r\n", raw)
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw.replace(b"\r\n.", b"\r\n"), bare


class HeaderFacts(NamedTuple):
    message_id: str | None
    has_date: bool


def header_facts(message: bytes) -> HeaderFacts:
    if message.startswith(b"\r\n"):  # an empty line first: no headers at all
        return HeaderFacts(None, False)
    end = message.find(_HEADER_END)
    headers = message[: end + 2] if end >= 0 else message
    match = _MESSAGE_ID.search(headers)
    message_id = None
    if match:
        message_id = b" ".join(match.group(1).split()).decode("utf-8", "replace")
    return HeaderFacts(message_id or None, _DATE.search(headers) is not None)


def received_header(
    *,
    helo: str,
    ip: str,
    hostname: str,
    protocol: str,
    qid: str,
    tls: str | None,
    auth_user: str | None,
    recipients: list[str],
    now: float | None = None,
) -> bytes:
    """A Received: trace header in Postfix's layout (RFC 5321 4.4, RFC 3848 keywords)."""
    lines = [
        f"Received: from {_comment_safe(helo)} (unknown [{ip}])",
        f"\tby {hostname} (smtprelay) with {protocol} id {qid}",
    ]
    if tls:
        lines.append(f"\t(using {tls})")
    if auth_user:
        lines.append(f"\t(Authenticated sender: {_comment_safe(auth_user)})")
    stamp = _date(now if now is not None else time.time())
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def origin_headers(facts: HeaderFacts, qid: str, hostname: str, now: float) -> bytes:
    """Date: and Message-ID: when the submitter left them out (RFC 6409 section 8)."""
    added = b""
    if not facts.has_date:
        added += f"Date: {_date(now)}\r\n".encode()
    if facts.message_id is None:
        added += f"Message-ID: <{qid}@{hostname}>\r\n".encode()
    return added


def _comment_safe(text: str) -> str:
    # Parentheses and backslashes would end or escape the comment they are printed in.
    return text.replace("\\", "?").replace("(", "?").replace(")", "?")


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second).astimezone())


def _date(ts: float) -> str:
    # RFC 5322 dates have whole seconds: format each second once, not once per message.
    return _date_of_second(int(ts))
