"""Open a ready SMTP session to one hop: connect, EHLO, the TLS policy, AUTH (a password,
or an OAuth 2.0 access token: XOAUTH2, else OAUTHBEARER).

The TCP connection is made here (not by aiosmtplib) so that a refused or timed-out
connect is told apart from a server that answered badly: only the former counts as
``unreachable`` towards marking a destination dead. Opportunistic TLS whose handshake
fails is retried in plaintext, as Postfix does; every other policy defers instead.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from dataclasses import dataclass, field

import aiosmtplib

from smtprelay.delivery import errors
from smtprelay.delivery.errors import (
    AUTH_FAILED,
    TLS_NOT_OFFERED,
    DeliveryError,
    TLSHandshakeFailed,
)
from smtprelay.delivery.outcome import Hop
from smtprelay.delivery.pool import Connection, Key
from smtprelay.delivery.routes import Credentials, Route, TLSPolicy


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 30.0
    command: float = 300.0
    data: float = 600.0  # after the final dot, RFC 5321 4.5.3.2.6


@dataclass
class Opener:
    """Opens sessions; counts them (``opened``) and keeps one TLS context per kind."""

    helo_name: str
    ca_file: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    opened: int = 0
    _contexts: dict[bool, ssl.SSLContext] = field(default_factory=dict)

    async def open(self, route: Route, hop: Hop, key: Key) -> Connection:
        """A session ready for MAIL FROM; raises DeliveryError."""
        try:
            return await self._open(route, hop, key, route.tls)
        except TLSHandshakeFailed as e:
            if route.tls is not TLSPolicy.OPPORTUNISTIC:
                raise errors.tls_failed(e, str(hop)) from None
            return await self._open(route, hop, key, TLSPolicy.NONE)

    async def _open(self, route: Route, hop: Hop, key: Key, tls: TLSPolicy) -> Connection:
        relay = str(hop)
        token = await _token(route.credentials)
        sock = await self._tcp_connect(hop)
        client = aiosmtplib.SMTP(
            hostname=hop.name,
            local_hostname=self.helo_name,
            timeout=self.timeouts.command,
            use_tls=tls is TLSPolicy.IMPLICIT,
            start_tls=False,
            tls_context=self._context(verify=True) if tls is TLSPolicy.IMPLICIT else None,
            sock=sock,
        )
        try:
            with errors.session_errors(relay):
                await client.connect(timeout=self.timeouts.command)
                self.opened += 1
                await _ehlo(client)
                if tls in (TLSPolicy.OPPORTUNISTIC, TLSPolicy.REQUIRED, TLSPolicy.VERIFY):
                    if client.supports_extension("starttls"):
                        with errors.starttls_errors():
                            await client.starttls(
                                server_hostname=hop.name,
                                tls_context=self._context(verify=tls is TLSPolicy.VERIFY),
                            )
                        await _ehlo(client)
                    elif tls is not TLSPolicy.OPPORTUNISTIC:
                        raise DeliveryError(
                            TLS_NOT_OFFERED.with_text(f"{TLS_NOT_OFFERED.text} {hop.name}"), relay
                        )
                if route.credentials is not None:
                    await _authenticate(client, route.credentials, token, relay)
        except (TLSHandshakeFailed, DeliveryError):
            client.close()
            raise
        return Connection(client, hop, key)

    async def _tcp_connect(self, hop: Hop) -> socket.socket:
        family = socket.AF_INET6 if ":" in hop.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            with errors.connect_errors(hop):
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, (hop.address, hop.port)),
                    self.timeouts.connect,
                )
        except DeliveryError:
            sock.close()
            raise
        return sock

    def _context(self, *, verify: bool) -> ssl.SSLContext:
        context = self._contexts.get(verify)
        if context is None:
            if verify:
                context = ssl.create_default_context(cafile=self.ca_file or None)
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[verify] = context
        return context


@dataclass(frozen=True, slots=True)
class Token:
    """An access token got before connecting, and whether the endpoint issued it just now."""

    value: str
    fresh: bool


async def _token(credentials: Credentials | None) -> Token | None:
    """The token an XOAUTH2 upstream needs, asked for *before* the connection is made:
    a slow token endpoint must not hold a connection idle into the server's timeout.
    Raises DeliveryError (the message is deferred) when the endpoint fails."""
    if credentials is None or credentials.oauth is None:
        return None
    source = credentials.oauth
    before = source.requests
    value = await source.token()
    return Token(value, source.requests != before)


async def _authenticate(
    client: aiosmtplib.SMTP, credentials: Credentials, token: Token | None, relay: str
) -> None:
    """AUTH PLAIN/LOGIN with a password, or XOAUTH2 (OAUTHBEARER, RFC 7628, where only
    that is offered) with an access token; a refused token is dropped from the cache."""
    source = credentials.oauth
    if source is None or token is None:
        with errors.auth_errors(relay):
            await client.login(credentials.username, credentials.password)
        return
    offered = client.server_auth_methods
    if "xoauth2" not in offered and "oauthbearer" not in offered:
        text = f"{AUTH_FAILED.text}: {relay} offers neither XOAUTH2 nor OAUTHBEARER"
        raise DeliveryError(AUTH_FAILED.with_text(text), relay)
    while True:
        try:
            with errors.auth_errors(relay):
                if "xoauth2" in offered:
                    await client.auth_xoauth2(credentials.username, token.value)
                else:
                    await _oauthbearer(client, credentials.username, token.value)
            return
        except DeliveryError:
            source.invalidate()
            if token.fresh:
                raise  # a token fresh from the endpoint was refused: no second try
        # A cached token refused (revoked, or the grant changed at the provider): one
        # more AUTH on this connection with a new one (RFC 4954 allows it).
        token = Token(await source.token(), fresh=True)


async def _oauthbearer(client: aiosmtplib.SMTP, username: str, token: str) -> None:
    """RFC 7628 OAUTHBEARER: a GS2 header naming the mailbox, then the bearer token; a
    failure comes as a 334 challenge (JSON), answered with ^A to get the final reply."""
    message = f"n,a={username},\x01auth=Bearer {token}\x01\x01"
    initial = base64.b64encode(message.encode()).decode()
    response = await client.execute_command(b"AUTH", b"OAUTHBEARER", initial.encode())
    if response.code == 334:
        response = await client.execute_command(base64.b64encode(b"\x01"))
    if response.code != 235:
        raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)


async def _ehlo(client: aiosmtplib.SMTP) -> None:
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        await client.helo()
