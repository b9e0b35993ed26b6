"""Listeners: plain (with STARTTLS), implicit-TLS and legacy-TLS ports, and the
connection limit.

A legacy listener (``[server] legacy_tls_listen``) is a plain one whose STARTTLS also
accepts TLS 1.0 and 1.1, through a TLS context of its own (:func:`tls.load_legacy`), so
that the other listeners keep ``[tls] min_version``. It is STARTTLS and not implicit TLS
because the devices that need it (printers, scanners, old ERPs) are set up as "SMTP with
STARTTLS" on port 25 or 587 far more often than "SSL" on 465, and because a plain port
also serves them when they send without TLS (with ``[auth] plaintext_networks``).

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
from enum import StrEnum
from pathlib import Path
from typing import Protocol, cast

from smtprelay import maillog, replies, tls
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


class ListenerKind(StrEnum):
    """What a listening socket serves (its ``[server]`` key)."""

    PLAIN = "plain"  # listen: SMTP, STARTTLS offered
    IMPLICIT = "implicit"  # listen_implicit_tls: TLS from the first byte
    LEGACY = "legacy"  # legacy_tls_listen: as plain, with TLS 1.0 and 1.1 accepted

    @property
    def implicit_tls(self) -> bool:
        return self is ListenerKind.IMPLICIT


@dataclass(frozen=True)
class ListenerState:
    endpoint: Endpoint
    implicit_tls: bool
    serving: bool
    local: bool = False  # the Unix socket of local submission (no TLS there)
    legacy_tls: bool = False  # a [server] legacy_tls_listen listener


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


def bind(settings: Settings) -> list[tuple[socket.socket, ListenerKind]]:
    """Listening sockets for every ``listen``, ``listen_implicit_tls`` and
    ``legacy_tls_listen`` endpoint, one per address a host name resolves to (as asyncio's
    create_server binds); OSError naming the endpoint if one cannot be bound."""
    kinds = [(e, ListenerKind.PLAIN) for e in settings.server.listen]
    kinds += [(e, ListenerKind.IMPLICIT) for e in settings.server.listen_implicit_tls]
    kinds += [(e, ListenerKind.LEGACY) for e in settings.server.legacy_tls_listen]
    bound: list[tuple[socket.socket, ListenerKind]] = []
    try:
        for endpoint, kind in kinds:
            try:
                bound += [(sock, kind) for sock in listen(endpoint)]
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {endpoint}: {e.strerror}") from None
    except OSError:
        for sock, _ in bound:
            sock.close()
        raise
    return bound


def listener_state(endpoint: Endpoint, kind: ListenerKind, serving: bool) -> ListenerState:
    return ListenerState(
        endpoint, kind.implicit_tls, serving, legacy_tls=kind is ListenerKind.LEGACY
    )


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
    _kinds: list[ListenerKind] = field(default_factory=list)  # per server
    sessions: Sessions = field(init=False)
    # TLS 1.0+ for the legacy listeners only; None without any.
    legacy_context: ssl.SSLContext | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.on_sessions)
        if self.settings.server.legacy_tls_listen:
            self.legacy_context = tls.legacy_server_context(self.settings)

    async def start(self, sockets: list[tuple[socket.socket, ListenerKind]] | None = None) -> None:
        """Serve on ``sockets`` (listening, with their kind), or bind every listener of
        the settings; raises OSError naming the address if one cannot bind."""
        loop = asyncio.get_running_loop()
        for sock, kind in bind(self.settings) if sockets is None else sockets:
            # Implicit TLS too is served as plain TCP: the session runs the handshake
            # itself, so that one that fails still gives its connection slot back.
            server = await loop.create_server(
                functools.partial(self._protocol, kind),
                sock=sock,
                backlog=1024,
            )
            self.servers.append(server)
            self._kinds.append(kind)

    @property
    def limit(self) -> int:
        return -(-self.settings.server.max_connections // self.share)  # rounded up

    def _protocol(self, kind: ListenerKind) -> asyncio.Protocol:
        server = self.settings.server
        implicit = kind.implicit_tls
        if len(self.sessions) >= self.limit:
            tls = (self.tls_context, self.settings.tls.handshake_timeout) if implicit else None
            return Refuse(server.max_connections, tls)
        context, min_version = self.tls_context, self.settings.tls.min_version
        if kind is ListenerKind.LEGACY and self.legacy_context is not None:
            context, min_version = self.legacy_context, "TLSv1"
        session = Session(
            self.intake,
            hostname=server.hostname,
            max_message_size=server.max_message_size,
            timeout=server.timeout,
            tls_context=context,
            implicit_tls=implicit,
            handshake_timeout=self.settings.tls.handshake_timeout,
            min_tls_version=min_version,
            proxy_from=server.proxy_protocol,
            allow_plaintext_auth=self.settings.auth.allow_plaintext,
            plaintext_networks=self.settings.auth.plaintext_networks,
            on_close=self.sessions.closed,
        )
        self.sessions.add(session)
        return session

    @property
    def endpoints(self) -> list[Endpoint]:
        return [state.endpoint for state in self.states()]

    def states(self) -> list[ListenerState]:
        return [
            listener_state(Endpoint(*sock.getsockname()[:2]), kind, server.is_serving())
            for server, kind in zip(self.servers, self._kinds, strict=True)
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
        if self.legacy_context is not None:  # checked by the caller (reload.prepare)
            tls.load_legacy(self.legacy_context, settings)
        self.settings = settings

    def close(self) -> None:
        """Stop accepting connections (existing sessions continue)."""
        for server in self.servers:
            server.close()

    async def drain(self, grace: float) -> None:
        """Ask idle sessions to leave with 421; give transactions ``grace`` seconds."""
        await self.sessions.drain(grace)
