"""Replies to a pipelined batch of commands (RFC 2920), read beside aiosmtplib.

aiosmtplib's protocol keeps one reply at a time: a reply that arrives before the
previous one was picked up is dropped, and libuv delivers several reads in a row. For
the duration of one batch the transport's protocol is swapped for :class:`BatchReplies`,
which queues every reply in order, then aiosmtplib's protocol is put back (the
connection is idle again: nothing more is due from the server).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from aiosmtplib import SMTPResponse, SMTPResponseException, SMTPServerDisconnected

# A reply longer than this is not SMTP (RFC 5321 allows 512 octets a line).
MAX_REPLY = 64 * 1024


class BatchReplies(asyncio.Protocol):
    """``async with BatchReplies(transport, limit) as replies: await replies.next()``."""

    def __init__(self, transport: Any, limit: float) -> None:
        self._transport = transport
        self._inner = transport.get_protocol()
        self._limit = limit
        self._buffer = bytearray()
        self._replies: deque[SMTPResponse] = deque()
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def __aenter__(self) -> BatchReplies:
        self._transport.set_protocol(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:  # an exception goes on as it is
        if self._error is None:  # after a connection loss aiosmtplib has been told
            self._transport.set_protocol(self._inner)

    async def next(self) -> SMTPResponse:
        """The next reply in order; TimeoutError after ``limit`` seconds of silence,
        SMTPServerDisconnected if the connection is gone."""
        while not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            async with asyncio.timeout(self._limit):
                await self._waiter
        return self._replies.popleft()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := _take_reply(self._buffer)) is not None:
                self._replies.append(reply)
        except SMTPResponseException as e:
            self._error = e
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close: an SMTP server does not half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self._error = SMTPServerDisconnected(f"connection lost: {exc or 'closed by server'}")
        self._inner.connection_lost(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _take_reply(buffer: bytearray) -> SMTPResponse | None:
    """Remove the first complete reply from ``buffer`` and return it (None if the
    buffer holds no complete reply yet)."""
    lines: list[bytes] = []
    start = 0
    while (end := buffer.find(b"\n", start)) != -1:
        line = bytes(buffer[start:end]).rstrip(b"\r")
        start = end + 1
        code = line[:3]
        if not code.isdigit() or line[3:4] not in (b"", b" ", b"-"):
            raise SMTPResponseException(-1, f"malformed reply line: {line[:80]!r}")
        lines.append(line[4:].strip(b" \t"))
        if line[3:4] != b"-":
            del buffer[:start]
            text = b"\n".join(lines).decode("utf-8", "surrogateescape")
            return SMTPResponse(int(code), text)
    if len(buffer) > MAX_REPLY:
        raise SMTPResponseException(-1, "reply too long")
    return None
