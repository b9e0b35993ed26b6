"""Which requests the HTTP front (:mod:`smtprelay.web.front`) serves itself.

The front reads a request's head and serves it only when it is the common case of the
submission API, plainly framed: ``POST /v1/messages`` without a query, HTTP/1.1, a
``Content-Length`` and neither ``Transfer-Encoding`` nor ``Expect``, ``Content-Type:
application/json``, a bearer token and no ``Idempotency-Key``. Everything else --
another path (a batch included), a head this strict reading does not take (folded
lines, repeated or non-ASCII fields), a refusal to explain -- goes to the main process
untouched, whose aiohttp server answers it as it always has. Being
strict here costs only a hand-off, never a wrong answer: the front never says "no".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Batches stay with the main process, whose preparing workers build their messages
# while it goes on (bench/README.md, "The HTTP front": 2.8x SMTP there, 1.45x here).
PATH: Final = b"/v1/messages"
# A head larger than this is not the common case (aiohttp's own line limit is 8190).
MAX_HEAD: Final = 8192
# Fields this reading acts on: each may appear at most once.
_READ: Final = frozenset({b"content-length", b"content-type", b"authorization", b"connection"})
# Fields whose presence alone sends the request to the main process.
_NOT_OURS: Final = frozenset({b"transfer-encoding", b"expect", b"idempotency-key", b"upgrade"})
_TOKEN_CHARS: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class Head:
    """A request the front may serve: the body's length, the bearer token presented,
    whether the client asked to close after it, and the head's size (the body starts
    there)."""

    length: int
    token: str
    close: bool
    size: int


class Incomplete:
    """The head has not all arrived yet."""


INCOMPLETE: Final = Incomplete()


def read_head(buffer: bytes | bytearray) -> Head | Incomplete | None:
    """The head at the start of ``buffer`` if the front serves it; None: hand it off."""
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return INCOMPLETE if len(buffer) < MAX_HEAD else None
    raw = bytes(buffer[:end])
    if not raw.isascii():
        return None
    line, *lines = raw.split(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return None
    if parts[1] != PATH:
        return None
    fields: dict[bytes, bytes] = {}
    for field in lines:
        name, colon, value = field.partition(b":")
        name = name.lower()
        if not colon or not name or not _TOKEN_CHARS.issuperset(name):
            return None  # a folded line, a space before the colon, no name: not ours
        if name in _NOT_OURS or (name in _READ and name in fields):
            return None
        if name in _READ:
            fields[name] = value.strip(b" \t")
    return _head(fields, end + 4)


def _head(fields: dict[bytes, bytes], size: int) -> Head | None:
    length = fields.get(b"content-length", b"")
    if not length.isdigit() or len(length) > 18:
        return None
    media = fields.get(b"content-type", b"").partition(b";")[0].strip(b" \t").lower()
    if media != b"application/json":
        return None
    scheme, _, presented = fields.get(b"authorization", b"").partition(b" ")
    token = presented.strip(b" \t")
    if scheme.lower() != b"bearer" or not token:
        return None
    options = {o.strip(b" \t") for o in fields.get(b"connection", b"").lower().split(b",")}
    if not options <= {b"", b"close", b"keep-alive"}:
        return None
    return Head(int(length), token.decode(), b"close" in options, size)
