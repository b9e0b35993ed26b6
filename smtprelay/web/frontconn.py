"""One client connection in the HTTP front (:mod:`smtprelay.web.front`).

The connection reads a request's head (:mod:`smtprelay.web.fronthead`) and, when the
front serves it, its body; it then answers ``202`` on the same connection and reads the
next request (keep-alive, pipelining in order). Any request the front does not serve
hands the whole connection to the main process: reading stops, the response written
before it has left, and the socket goes over with every byte read of it since the
last answer. From then on the connection is the main process's, for good.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
from typing import Any, Protocol

from smtprelay.web import fronthead, intake
from smtprelay.web.connections import BUSY
from smtprelay.web.tokens import Token

log = logging.getLogger("smtprelay.http")

# Seconds an idle keep-alive connection stays open (the main process's aiohttp: 15).
KEEPALIVE = 15.0


class Reply:
    """A submission answered: the 202's JSON body and its ``Location``, if one."""

    __slots__ = ("body", "location")

    def __init__(self, body: bytes, location: str | None) -> None:
        self.body = body
        self.location = location


class Server(Protocol):
    """What a connection asks of the front."""

    def admit(self, connection: object, ip: str) -> bool: ...
    def release(self, connection: object) -> None: ...
    def token(self, head: fronthead.Head) -> Token | None: ...
    async def submit(
        self, head: fronthead.Head, body: bytes, origin: intake.Origin
    ) -> Reply | None: ...
    def handoff(self, fd: int, read: bytes) -> bool: ...


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ip, self.port = "unknown", 0
        self.busy = False  # a request is being served or handed off
        self.head: fronthead.Head | None = None  # read, waiting for its body
        self._token: Token | None = None  # the head's
        self.closed = False
        self.eof = False  # the client has half-closed its side
        self._drained: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.ip, self.port = str(peer[0]), int(peer[1])
        if not self.server.admit(self, self.ip):
            self.closed = True
            transport.write(BUSY)
            transport.close()
            return
        # Told (pause_writing) whenever anything waits to be written, so that a hand-off
        # waits until every byte of the answers before it has left.
        transport.set_write_buffer_limits(high=0)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy and not self.closed:
            self._next()

    def eof_received(self) -> bool:
        # The client sent all it will: a request being served is answered, a part of
        # one goes to the main process (which answers it as it always has), and then the
        # connection closes -- at once if there is nothing to answer.
        self.eof = True
        if self.busy or self.closed:
            return True
        if self.buffer:
            self._start(self._handoff())
            return True
        self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.release(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- requests ------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve, hand off or wait for the request at the start of the buffer."""
        head = self.head
        if head is None:
            if not self.buffer:
                return
            found = fronthead.read_head(self.buffer)
            if isinstance(found, fronthead.Incomplete):
                return
            token = self.server.token(found) if found is not None else None
            if found is None or token is None:
                self._start(self._handoff())
                return
            head = self.head = found
            self._token = token
        if len(self.buffer) < head.size + head.length:
            return
        assert self._token is not None
        self._start(self._serve(head, self._token))

    def _start(self, work: Any) -> None:
        self.busy = True
        if self._timer is not None:
            self._timer.cancel()
        assert self.transport is not None
        self.transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(work)

    async def _serve(self, head: fronthead.Head, token: Token) -> None:
        assert self.transport is not None
        end = head.size + head.length
        body = bytes(self.buffer[head.size : end])
        reply = await self.server.submit(head, body, intake.Origin(token, self.ip, self.port))
        if reply is None:
            await self._handoff()
            return
        if self.closed:
            return  # the client left: its messages are queued all the same
        del self.buffer[:end]
        self.head = None
        self.transport.write(_response(reply, head.close))
        if head.close:
            self._close()
            return
        self.busy = False
        self.transport.resume_reading()
        self._arm()
        self._next()
        if self.eof and not self.busy and not self.closed:
            self.eof_received()  # what is left is all there will be

    async def _handoff(self) -> None:
        """The connection goes to the main process with what was read of it."""
        transport = self.transport
        assert transport is not None
        if self._drained is not None:
            await self._drained  # the answers before have left (or the client is gone)
        if self.closed:
            return
        self.closed = True
        sock = transport.get_extra_info("socket")
        fd = os.dup(sock.fileno())
        try:
            sent = self.server.handoff(fd, bytes(self.buffer))
        finally:
            os.close(fd)
        self.buffer.clear()
        # Only this process's descriptor closes: the connection lives on in the main
        # process (or, if it could not be sent, this is its end).
        transport.abort()
        if not sent:
            log.warning(
                "unknown[%s]: HTTP connection closed: the main process did not take it",
                self.ip,
                extra={"service": "http"},
            )

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(KEEPALIVE, self._idle)

    def _idle(self) -> None:
        """Keep-alive ran out: an idle connection closes; one with a request half sent
        goes to the main process, which times it out as it always has."""
        if self.busy or self.closed:
            return
        if self.buffer:
            self._start(self._handoff())
        else:
            self._close()

    def _close(self) -> None:
        self.closed = True
        assert self.transport is not None
        self.transport.close()


def _response(reply: Reply, close: bool) -> bytes:
    location = f"Location: {reply.location}\r\n" if reply.location else ""
    return (
        "HTTP/1.1 202 Accepted\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"{location}Content-Length: {len(reply.body)}\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    ).encode("ascii") + reply.body
