"""Listeners: plain (with STARTTLS) and implicit-TLS ports, and the connection limit."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import cast

from smtprelay import maillog, replies
from smtprelay.config import Settings
from smtprelay.inbound.handler import Intake
from smtprelay.inbound.protocol import Session
from smtprelay.units import Endpoint


class _Refuse(asyncio.Protocol):
    """Answers 421 to a connection over ``max_connections`` and hangs up."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, hence a cast and not an assert.
        transport = cast(asyncio.WriteTransport, transport)
        peer = transport.get_extra_info("peername")
        maillog.too_many_connections(str(peer[0]) if peer else "unknown", self.limit)
        transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode())
        transport.close()


@dataclass
class InboundServer:
    settings: Settings
    intake: Intake
    tls_context: ssl.SSLContext
    sessions: set[Session] = field(default_factory=set)
    servers: list[asyncio.Server] = field(default_factory=list)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Bind every listener; raises OSError naming the address if one cannot bind."""
        loop = asyncio.get_running_loop()
        kinds = [(e, False) for e in self.settings.server.listen]
        kinds += [(e, True) for e in self.settings.server.listen_implicit_tls]
        for endpoint, implicit in kinds:
            try:
                server = await loop.create_server(
                    lambda implicit=implicit: self._protocol(implicit),
                    endpoint.host,
                    endpoint.port,
                    ssl=self.tls_context if implicit else None,
                    reuse_address=True,
                    backlog=1024,
                )
            except OSError as e:
                self.close()
                raise OSError(e.errno, f"cannot listen on {endpoint}: {e.strerror}") from None
            self.servers.append(server)

    def _protocol(self, implicit: bool) -> asyncio.Protocol:
        server = self.settings.server
        if len(self.sessions) >= server.max_connections:
            return _Refuse(server.max_connections)
        session = Session(
            self.intake,
            hostname=server.hostname,
            max_message_size=server.max_message_size,
            timeout=server.timeout,
            starttls_context=None if implicit else self.tls_context,
            implicit_tls=implicit,
            allow_plaintext_auth=self.settings.auth.allow_plaintext,
            on_close=self._closed,
        )
        self.sessions.add(session)
        self._idle.clear()
        return session

    @property
    def endpoints(self) -> list[Endpoint]:
        bound = []
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound.append(Endpoint(host, port))
        return bound

    def close(self) -> None:
        """Stop accepting connections (existing sessions continue)."""
        for server in self.servers:
            server.close()

    def _closed(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Ask idle sessions to leave with 421; give transactions ``grace`` seconds."""
        for session in list(self.sessions):
            session.close_for_shutdown()
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for session in list(self.sessions):
            session.hang_up(replies.SHUTTING_DOWN)
