"""Listeners: plain (with STARTTLS) and implicit-TLS ports, and the connection limit.

The daemon serves SMTP either itself (``[server] workers = 0``) or through worker
processes (:mod:`smtprelay.inbound.workers`), each running an :class:`InboundServer` on
listening sockets the main process bound. Both offer the main process the same view
(:class:`Listeners`): endpoints, whether each serves, open sessions, reload, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from smtprelay import maillog, replies
from smtprelay.config import Settings
from smtprelay.envelope import Envelope
from smtprelay.inbound import handshake
from smtprelay.inbound.auth import Authenticator
from smtprelay.inbound.connection import Sessions
from smtprelay.inbound.handler import Intake
from smtprelay.inbound.policy import Policy
from smtprelay.inbound.protocol import Session
from smtprelay.spool import Spool
from smtprelay.units import Endpoint

# How long a stop waits for SMTP transactions under way (and, in the main process, for
# deliveries under way) before hanging up.
SHUTDOWN_GRACE = 10.0


@dataclass(frozen=True)
class ListenerState:
    endpoint: Endpoint
    implicit_tls: bool
    serving: bool
    local: bool = False  # the Unix socket of local submission (no TLS there)


class Listeners(Protocol):
    """What the main process needs of its SMTP service, in-process or in workers."""

    @property
    def endpoints(self) -> list[Endpoint]: ...

    def states(self) -> list[ListenerState]: ...

    @property
    def session_count(self) -> int: ...

    def apply(self, settings: Settings, authenticator: Authenticator | None) -> None: ...

    def close(self) -> None: ...

    async def drain(self, grace: float) -> None: ...


def bind(settings: Settings) -> list[tuple[socket.socket, bool]]:
    """Listening sockets for every ``listen`` (False) and ``listen_implicit_tls`` (True)
    endpoint, one per address a host name resolves to (as asyncio's create_server
    binds); OSError naming the endpoint if one cannot be bound."""
    kinds = [(e, False) for e in settings.server.listen]
    kinds += [(e, True) for e in settings.server.listen_implicit_tls]
    bound: list[tuple[socket.socket, bool]] = []
    try:
        for endpoint, implicit in kinds:
            try:
                bound += [(sock, implicit) for sock in listen(endpoint)]
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {endpoint}: {e.strerror}") from None
    except OSError:
        for sock, _ in bound:
            sock.close()
        raise
    return bound


def listen(endpoint: Endpoint) -> list[socket.socket]:
    """Listening sockets for ``endpoint`` (also the HTTP endpoint's), not serving yet."""
    infos = socket.getaddrinfo(
        endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(1024)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def build_intake(
    settings: Settings,
    spool: Spool,
    authenticator: Authenticator | None,
    on_queued: Callable[[Envelope, bytes], None] | None,
) -> Intake:
    return Intake(
        hostname=settings.server.hostname,
        policy=Policy(settings.relay, settings.server.max_recipients),
        authenticator=authenticator,
        spool=spool,
        max_message_size=settings.server.max_message_size,
        on_queued=on_queued,
        authenticated_header=settings.auth.authenticated_header,
    )


def users(settings: Settings) -> Authenticator | None:
    """The authenticator of ``[auth] users_file``, read now (UsersFileError if broken)."""
    if not settings.auth.users_file:
        return None
    authenticator = Authenticator(Path(settings.auth.users_file))
    authenticator.refresh()
    return authenticator


class Refuse(asyncio.Protocol):
    """Answers 421 to a connection over ``max_connections`` and hangs up (on the
    implicit-TLS port after the handshake, so that the client can read the reply).
    ``client`` names the caller in the log where there is no peer address."""

    def __init__(
        self, limit: int, tls: tuple[ssl.SSLContext, float] | None, client: str | None = None
    ) -> None:
        self.limit = limit
        self.tls = tls
        self.client = client
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = self.client or (str(peer[0]) if peer else "unknown")
        maillog.too_many_connections(client, self.limit)
        if self.tls is None:
            self._refuse(transport)
            return
        started = handshake.Handshake(transport, self, *self.tls)
        self._task = asyncio.get_running_loop().create_task(self._refuse_over_tls(started))

    async def _refuse_over_tls(self, started: handshake.Handshake) -> None:
        with contextlib.suppress(handshake.HandshakeFailed):
            self._refuse(await started.result(""))

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, hence a cast and not an assert.
        transport = cast(asyncio.WriteTransport, transport)
        transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode())
        transport.close()


@dataclass
class InboundServer:
    settings: Settings
    intake: Intake
    tls_context: ssl.SSLContext
    # This process's share of [server] max_connections (workers divide it among them).
    share: int = 1
    # Told the number of open sessions whenever it changes (a worker reports it).
    on_sessions: Callable[[int], None] | None = None
    servers: list[asyncio.Server] = field(default_factory=list)
    _implicit: list[bool] = field(default_factory=list)  # per server: implicit TLS?
    sessions: Sessions = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.on_sessions)

    async def start(self, sockets: list[tuple[socket.socket, bool]] | None = None) -> None:
        """Serve on ``sockets`` (listening, with their implicit-TLS flag), or bind every
        listener of the settings; raises OSError naming the address if one cannot bind."""
        loop = asyncio.get_running_loop()
        for sock, implicit in bind(self.settings) if sockets is None else sockets:
            # Implicit TLS too is served as plain TCP: the session runs the handshake
            # itself, so that one that fails still gives its connection slot back.
            server = await loop.create_server(
                functools.partial(self._protocol, implicit),
                sock=sock,
                backlog=1024,
            )
            self.servers.append(server)
            self._implicit.append(implicit)

    @property
    def limit(self) -> int:
        return -(-self.settings.server.max_connections // self.share)  # rounded up

    def _protocol(self, implicit: bool) -> asyncio.Protocol:
        server = self.settings.server
        if len(self.sessions) >= self.limit:
            tls = (self.tls_context, self.settings.tls.handshake_timeout) if implicit else None
            return Refuse(server.max_connections, tls)
        session = Session(
            self.intake,
            hostname=server.hostname,
            max_message_size=server.max_message_size,
            timeout=server.timeout,
            tls_context=self.tls_context,
            implicit_tls=implicit,
            handshake_timeout=self.settings.tls.handshake_timeout,
            min_tls_version=self.settings.tls.min_version,
            proxy_from=server.proxy_protocol,
            allow_plaintext_auth=self.settings.auth.allow_plaintext,
            on_close=self.sessions.closed,
        )
        self.sessions.add(session)
        return session

    @property
    def endpoints(self) -> list[Endpoint]:
        return [state.endpoint for state in self.states()]

    def states(self) -> list[ListenerState]:
        return [
            ListenerState(Endpoint(*sock.getsockname()[:2]), implicit, server.is_serving())
            for server, implicit in zip(self.servers, self._implicit, strict=True)
            for sock in server.sockets
        ]

    @property
    def session_count(self) -> int:
        return len(self.sessions)

    def apply(self, settings: Settings, authenticator: Authenticator | None) -> None:
        """New settings for new sessions (reload); the TLS context is updated by the caller."""
        self.intake.policy = Policy(settings.relay, settings.server.max_recipients)
        if authenticator is not None and self.intake.authenticator is not None:
            authenticator.inherit(self.intake.authenticator)
        self.intake.authenticator = authenticator
        self.intake.authenticated_header = settings.auth.authenticated_header
        self.intake.max_message_size = settings.server.max_message_size
        self.intake.hostname = settings.server.hostname
        self.settings = settings

    def close(self) -> None:
        """Stop accepting connections (existing sessions continue)."""
        for server in self.servers:
            server.close()

    async def drain(self, grace: float) -> None:
        """Ask idle sessions to leave with 421; give transactions ``grace`` seconds."""
        await self.sessions.drain(grace)
