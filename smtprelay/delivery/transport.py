"""The SMTP client side: deliver one message to one next hop, reusing connections.

Hops are tried in order; a hop that cannot be reached, greets with an error, fails
EHLO, TLS or AUTH, or refuses MAIL FROM temporarily, moves the attempt to the next
hop. Once a transaction is under way the results are per recipient: each RCPT reply is
kept, and the reply to the final dot applies to every recipient the server accepted.
Timeouts follow RFC 5321 section 4.5.3.2 (the wait after the final dot is 10 minutes).

Connections are kept open after a transaction and reused for the next message to the
same address (RSET only after an aborted transaction), closed after ``idle_timeout``.

Lines longer than ``line_length_limit`` are folded (linefold.py) once per delivery,
before SIZE is computed and before dot-stuffing, so both see the bytes that are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from smtprelay import maillog
from smtprelay.delivery import linefold
from smtprelay.delivery.outcome import DeliveryError, Hop, RecipientOutcome
from smtprelay.delivery.pipelining import BatchReplies
from smtprelay.delivery.routes import Route, TLSPolicy
from smtprelay.replies import Reply

CONNECTION_FAILED = Reply(451, "4.4.1", "Connection failed")
LOST = Reply(451, "4.4.2", "Lost connection")
TIMED_OUT = Reply(451, "4.4.2", "Conversation timed out")
TLS_NOT_OFFERED = Reply(451, "4.7.4", "TLS is required, but was not offered by host")
TLS_FAILED = Reply(451, "4.7.5", "Cannot start TLS")
AUTH_FAILED = Reply(451, "4.7.8", "Authentication with the smarthost failed")
TOO_BIG = Reply(552, "5.3.4", "Message too big for the next hop")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Next hop does not support SMTPUTF8, required by this message")
NEEDS_8BITMIME = Reply(554, "5.6.3", "Next hop does not support 8-bit content (8BITMIME)")
UNSAFE_ADDRESS = Reply(553, "5.1.3", "Address contains characters that cannot be sent safely")

_UNSAFE = ("\r", "\n", "\x00", "<", ">", " ")


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 30.0
    command: float = 300.0
    data: float = 600.0  # after the final dot, RFC 5321 4.5.3.2.6


@dataclass(eq=False)
class _Connection:
    client: aiosmtplib.SMTP
    hop: Hop
    key: tuple[object, ...]
    idle_close: asyncio.TimerHandle | None = None
    transactions: int = 0


@dataclass
class Transport:
    helo_name: str
    ca_file: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    idle_timeout: float = 10.0
    max_idle_per_hop: int = 20
    line_length_limit: int = 998  # 0: lines are sent as they are
    _idle: dict[tuple[object, ...], list[_Connection]] = field(default_factory=dict)
    _contexts: dict[bool, ssl.SSLContext] = field(default_factory=dict)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    connections_opened: int = 0

    async def deliver(
        self,
        route: Route,
        hops: list[Hop],
        sender: str,
        recipients: list[str],
        data: bytes,
        mail_params: dict[str, str],
        rcpt_params: dict[str, dict[str, str]] | None = None,
        *,
        qid: str = "NOQUEUE",
    ) -> list[RecipientOutcome]:
        """Per-recipient outcomes; raises DeliveryError (temporary) if no hop would talk.

        ``rcpt_params`` (address -> NOTIFY/ORCPT) are passed on when the hop speaks DSN;
        ``qid`` names the message in the log line about folded lines.
        """
        unsafe = [r for r in [sender, *recipients] if any(c in r for c in _UNSAFE)]
        if unsafe:
            return [RecipientOutcome(r, UNSAFE_ADDRESS, "none") for r in recipients]
        folded = linefold.fold(data, self.line_length_limit)
        if folded.lines:
            maillog.folded_lines(qid, folded.lines, folded.longest, self.line_length_limit)
            data = folded.data
        errors: list[DeliveryError] = []
        for hop in self._reuse_first(route, hops):
            for _ in range(2):  # a reused connection found closed gets one fresh try
                started = time.monotonic()
                try:
                    conn = await self._checkout(route, hop)
                except DeliveryError as e:
                    errors.append(e)
                    break
                connected = time.monotonic()
                try:
                    return await self._transaction(
                        conn, sender, recipients, data, mail_params, rcpt_params or {},
                        connected - started,
                    )
                except _TryNextHop as e:
                    errors.append(e.error)
                    break
                except _StaleConnection:
                    continue
        last = errors[-1] if errors else DeliveryError(CONNECTION_FAILED)
        raise DeliveryError(
            last.reply, last.relay, unreachable=all(e.unreachable for e in errors)
        )

    def _reuse_first(self, route: Route, hops: list[Hop]) -> list[Hop]:
        """Hops with an idle connection first: a live connection beats a new one."""
        warm = [h for h in hops if self._idle.get(self._key(route, h))]
        return warm + [h for h in hops if h not in warm]

    # --- connections ------------------------------------------------------------

    @staticmethod
    def _key(route: Route, hop: Hop) -> tuple[object, ...]:
        user = route.credentials.username if route.credentials else None
        return (hop.address, hop.port, route.tls, user)

    async def _checkout(self, route: Route, hop: Hop) -> _Connection:
        key = self._key(route, hop)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.idle_close is not None:
                conn.idle_close.cancel()
            if conn.client.is_connected:
                return conn
        return await self._connect(route, hop, key)

    def checkin(self, conn: _Connection) -> None:
        if not conn.client.is_connected:
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle_per_hop:
            self._quit_later(conn)
            return
        idle.append(conn)
        conn.idle_close = asyncio.get_running_loop().call_later(
            self.idle_timeout, self._expire, conn
        )

    def _expire(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key, [])
        if conn in idle:
            idle.remove(conn)
            self._quit_later(conn)

    def _quit_later(self, conn: _Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._quit(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _quit(conn: _Connection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.client.quit(), 5)
        conn.client.close()

    async def close(self) -> None:
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            if conn.idle_close is not None:
                conn.idle_close.cancel()
        await asyncio.gather(*(self._quit(c) for c in conns))

    async def _connect(self, route: Route, hop: Hop, key: tuple[object, ...]) -> _Connection:
        try:
            return await self._open(route, hop, key, route.tls)
        except _TLSHandshakeFailed as e:
            if route.tls is not TLSPolicy.OPPORTUNISTIC:
                failed = TLS_FAILED.with_text(f"{TLS_FAILED.text}: {e}")
                raise DeliveryError(failed, str(hop)) from None
            # Opportunistic TLS that fails is retried in plaintext, as Postfix does.
            return await self._open(route, hop, key, TLSPolicy.NONE)

    async def _open(
        self, route: Route, hop: Hop, key: tuple[object, ...], tls: TLSPolicy
    ) -> _Connection:
        relay = str(hop)
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
            await client.connect(timeout=self.timeouts.command)
            self.connections_opened += 1
            await self._ehlo(client)
            if tls in (TLSPolicy.OPPORTUNISTIC, TLSPolicy.REQUIRED, TLSPolicy.VERIFY):
                if client.supports_extension("starttls"):
                    try:
                        await client.starttls(
                            server_hostname=hop.name,
                            tls_context=self._context(verify=tls is TLSPolicy.VERIFY),
                        )
                    except (ssl.SSLError, aiosmtplib.SMTPConnectError, ConnectionError,
                            aiosmtplib.SMTPResponseException) as e:
                        # A handshake error or a refusal of STARTTLS (e.g. 454).
                        raise _TLSHandshakeFailed(str(e)) from None
                    await self._ehlo(client)
                elif tls is not TLSPolicy.OPPORTUNISTIC:
                    raise DeliveryError(TLS_NOT_OFFERED.with_text(
                        f"{TLS_NOT_OFFERED.text} {hop.name}"), relay)
            if route.credentials is not None:
                try:
                    await client.login(route.credentials.username, route.credentials.password)
                except aiosmtplib.SMTPAuthenticationError as e:
                    raise DeliveryError(AUTH_FAILED.with_text(
                        f"{AUTH_FAILED.text} ({e.code} {e.message})"), relay) from None
                except aiosmtplib.SMTPException as e:
                    raise DeliveryError(AUTH_FAILED.with_text(f"{AUTH_FAILED.text}: {e}"), relay
                                        ) from None
        except _TLSHandshakeFailed:
            client.close()
            raise
        except DeliveryError:
            client.close()
            raise
        except aiosmtplib.SMTPResponseException as e:
            client.close()
            raise DeliveryError(_session_reply(e.code, e.message), relay) from None
        except ssl.SSLError as e:
            client.close()
            raise DeliveryError(TLS_FAILED.with_text(f"{TLS_FAILED.text}: {e}"), relay) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            client.close()
            raise DeliveryError(_transport_reply(e), relay) from None
        return _Connection(client, hop, key)

    async def _tcp_connect(self, hop: Hop) -> socket.socket:
        family = socket.AF_INET6 if ":" in hop.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (hop.address, hop.port)),
                self.timeouts.connect,
            )
        except (OSError, TimeoutError) as e:
            sock.close()
            text = "connection timed out" if isinstance(e, TimeoutError) else e.strerror or str(e)
            raise DeliveryError(
                CONNECTION_FAILED.with_text(f"connect to {hop}: {text}"), str(hop),
                unreachable=True,
            ) from None
        return sock

    @staticmethod
    async def _ehlo(client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()

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

    # --- one transaction ----------------------------------------------------------

    async def _transaction(
        self,
        conn: _Connection,
        sender: str,
        recipients: list[str],
        data: bytes,
        mail_params: dict[str, str],
        rcpt_params: dict[str, dict[str, str]],
        connect_time: float,
    ) -> list[RecipientOutcome]:
        client, relay = conn.client, str(conn.hop)
        started = time.monotonic()
        dsn = client.supports_extension("dsn")

        def each(reply: Reply, rcpts: list[str] = recipients) -> list[RecipientOutcome]:
            spent = time.monotonic() - started
            passed = dsn and reply.code < 300
            return [RecipientOutcome(r, reply, relay, connect_time, spent, passed) for r in rcpts]

        options, refusal = self._mail_options(client, data, mail_params)
        if refusal is not None:
            self.checkin(conn)
            return each(refusal)
        protocol = client.protocol
        if client.supports_extension("pipelining") and protocol is not None \
                and protocol.transport is not None:  # else: the lost connection shows below
            return await self._pipelined(conn, sender, recipients, data, options,
                                         rcpt_params if dsn else {}, each)
        try:
            response = await client.execute_command(
                b"MAIL", b"FROM:<" + sender.encode() + b">", *options
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            client.close()
            if conn.transactions:
                raise _StaleConnection from None
            raise _TryNextHop(DeliveryError(_transport_reply(e), relay)) from None
        accepted: list[str] = []
        outcomes: list[RecipientOutcome] = []
        try:
            if response.code != 250:
                return await self._mail_refused(conn, response, each)
            for rcpt in recipients:
                extra = _dsn_rcpt_options(rcpt_params.get(rcpt, {})) if dsn else []
                response = await client.execute_command(
                    b"RCPT", b"TO:<" + rcpt.encode() + b">", *extra)
                if _rcpt_taken(rcpt, response, outcomes, each):
                    accepted.append(rcpt)
            if not accepted:
                await self._reset_or_close(conn)
                return outcomes
            response = await self._send_data(client, data)
            reply = _session_reply(response.code, response.message)
            if response.code != 250:
                await self._reset_or_close(conn)
                return outcomes + each(reply, accepted)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            client.close()
            done = {o.address for o in outcomes}
            return outcomes + each(_transport_reply(e), [r for r in recipients if r not in done])
        conn.transactions += 1
        self.checkin(conn)
        return outcomes + each(reply, accepted)

    async def _pipelined(
        self,
        conn: _Connection,
        sender: str,
        recipients: list[str],
        data: bytes,
        options: list[bytes],
        rcpt_params: dict[str, dict[str, str]],
        each: Callable[..., list[RecipientOutcome]],
    ) -> list[RecipientOutcome]:
        """RFC 2920: MAIL, every RCPT and DATA in one write, then their replies in order,
        then the message: two round trips instead of three plus one per recipient.
        Replies count exactly as in the one-command-at-a-time path."""
        client, relay = conn.client, str(conn.hop)
        protocol = client.protocol
        assert protocol is not None and protocol.transport is not None
        # uvloop's transports do not subclass asyncio's, hence a cast and not an assert.
        transport = cast(asyncio.WriteTransport, protocol.transport)
        commands = [b" ".join([b"MAIL", b"FROM:<" + sender.encode() + b">", *options])]
        commands += [
            b" ".join([b"RCPT", b"TO:<" + rcpt.encode() + b">",
                       *_dsn_rcpt_options(rcpt_params.get(rcpt, {}))])
            for rcpt in recipients
        ]
        commands.append(b"DATA")
        if any(b"\r" in c or b"\n" in c for c in commands):  # never re-targeted on output
            raise ValueError("command contains a line break")
        mail: aiosmtplib.SMTPResponse | None = None
        try:
            async with BatchReplies(transport, self.timeouts.command) as batch:
                transport.write(b"\r\n".join(commands) + b"\r\n")
                mail = await batch.next()
                rcpt_replies = [await batch.next() for _ in recipients]
                go_ahead = await batch.next()
                if go_ahead.code == 354 and (
                        mail.code != 250
                        or not any(r.code in (250, 251) for r in rcpt_replies)):
                    # A server that said 354 anyway gets an empty message (then RSET).
                    transport.write(b".\r\n")
                    await batch.next()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            client.close()
            if mail is None and conn.transactions:
                raise _StaleConnection from None
            if mail is None:
                raise _TryNextHop(DeliveryError(_transport_reply(e), relay)) from None
            return each(_transport_reply(e))  # nothing was sent
        if mail.code != 250:
            return await self._mail_refused(conn, mail, each)
        outcomes: list[RecipientOutcome] = []
        accepted = [rcpt for rcpt, response in zip(recipients, rcpt_replies, strict=True)
                    if _rcpt_taken(rcpt, response, outcomes, each)]
        if not accepted:
            await self._reset_or_close(conn)
            return outcomes
        if go_ahead.code != 354:
            await self._reset_or_close(conn)
            return outcomes + each(_session_reply(go_ahead.code, go_ahead.message), accepted)
        try:
            response = await self._send_payload(protocol, data)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            client.close()
            return outcomes + each(_transport_reply(e), accepted)
        reply = _session_reply(response.code, response.message)
        if response.code != 250:
            await self._reset_or_close(conn)
            return outcomes + each(reply, accepted)
        conn.transactions += 1
        self.checkin(conn)
        return outcomes + each(reply, accepted)

    async def _mail_refused(
        self, conn: _Connection, response: aiosmtplib.SMTPResponse,
        each: Callable[..., list[RecipientOutcome]],
    ) -> list[RecipientOutcome]:
        """MAIL not accepted: the next hop for a 4xx, a failure of every recipient for 5xx."""
        reply = _session_reply(response.code, response.message)
        await self._reset_or_close(conn)
        if reply.is_temporary:
            raise _TryNextHop(DeliveryError(reply, str(conn.hop)))
        return each(reply)

    async def _send_payload(self, protocol: SMTPProtocol, data: bytes) -> aiosmtplib.SMTPResponse:
        # ``data`` is folded already: every line a fold made starts with a space or a tab,
        # so stuffing after folding sees each line that starts with "." as it is sent.
        payload = b"." + data if data.startswith(b".") else data
        payload = payload.replace(b"\r\n.", b"\r\n..")
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        protocol.write(payload + b".\r\n")
        # No await between the write and this call: the reply cannot be missed.
        response: aiosmtplib.SMTPResponse = await protocol.read_response(
            timeout=self.timeouts.data)
        return response

    async def _send_data(
        self, client: aiosmtplib.SMTP, data: bytes
    ) -> aiosmtplib.SMTPResponse:
        """DATA, the message dot-stuffed, the final dot; the 354 or the final reply.

        aiosmtplib's ``data()`` re-normalises line endings with a regex over the whole
        message; spooled messages are CRLF-clean already, so stuffing is one
        ``bytes.replace`` -- the difference is most of the CPU cost of a large message.
        """
        response = await client.execute_command(b"DATA")
        if response.code != 354 or client.protocol is None:
            return response
        return await self._send_payload(client.protocol, data)

    def _mail_options(
        self, client: aiosmtplib.SMTP, data: bytes, params: dict[str, str]
    ) -> tuple[list[bytes], Reply | None]:
        options: list[bytes] = []
        if client.supports_extension("size"):
            limit = client.esmtp_extensions.get("size", "")
            if limit.isdigit() and 0 < int(limit) < len(data):
                return [], TOO_BIG.with_text(f"{TOO_BIG.text} (limit {limit} bytes)")
            options.append(f"SIZE={len(data)}".encode())
        if "SMTPUTF8" in params:
            if not client.supports_extension("smtputf8"):
                return [], NEEDS_SMTPUTF8
            options.append(b"SMTPUTF8")
        if client.supports_extension("dsn"):
            options += [f"{k}={params[k]}".encode() for k in ("RET", "ENVID") if k in params]
        if params.get("BODY", "").upper() == "8BITMIME" or not data.isascii():
            if client.supports_extension("8bitmime"):
                options.append(b"BODY=8BITMIME")
            elif not data.isascii():
                return [], NEEDS_8BITMIME
        return options, None

    async def _reset_or_close(self, conn: _Connection) -> None:
        try:
            response = await conn.client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            conn.client.close()
            return
        if response.code == 250:
            self.checkin(conn)
        else:
            conn.client.close()


class _TLSHandshakeFailed(Exception):
    pass


class _StaleConnection(Exception):
    """A reused connection had been closed by the server: open a new one."""


class _TryNextHop(Exception):
    def __init__(self, error: DeliveryError) -> None:
        super().__init__(str(error))
        self.error = error


def _rcpt_taken(
    rcpt: str, response: aiosmtplib.SMTPResponse, outcomes: list[RecipientOutcome],
    each: Callable[..., list[RecipientOutcome]],
) -> bool:
    """True if the RCPT reply accepts ``rcpt``; else its outcome is added to ``outcomes``."""
    if response.code in (250, 251):
        return True
    outcomes += each(_session_reply(response.code, response.message), [rcpt])
    return False


def _dsn_rcpt_options(params: dict[str, str]) -> list[bytes]:
    return [f"{k}={params[k]}".encode() for k in ("NOTIFY", "ORCPT") if k in params]


def _session_reply(code: int, message: str) -> Reply:
    """A remote reply as a Reply; the enhanced code is taken from the text when present."""
    first, _, rest = message.partition(" ")
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(code)[0]:
        return Reply(code, first, rest)
    klass = str(code)[0]
    default = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}.get(klass, "4.0.0")
    return Reply(code, default, message)


def _transport_reply(error: BaseException) -> Reply:
    if isinstance(error, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return TIMED_OUT
    return LOST.with_text(f"{LOST.text}: {error}")
