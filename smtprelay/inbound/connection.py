"""The life of one inbound connection, below the SMTP dialogue: from accept to the
slot given back.

Every way a connection can end goes through here and gives its connection slot back
(``on_close``, exactly once): a client that closes before the greeting, resets, fails or
abandons a TLS handshake, sends no valid PROXY header, times out, or stops reading while
the relay writes. aiosmtpd alone would keep some of these for ever (see
:mod:`smtprelay.inbound.handshake`).

Order on a new connection: the PROXY header when ``[server] proxy_protocol`` is set (the
real client's address), then the TLS handshake on the implicit-TLS port, then the SMTP
greeting. STARTTLS runs the same handshake in mid-session.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from aiosmtpd.smtp import SMTP as _AiosmtpdSMTP

from smtprelay import maillog, replies
from smtprelay.inbound import handshake, proxyheader
from smtprelay.replies import Reply

# Negotiated only where allowed: on a legacy_tls_listen listener, or everywhere with
# [tls] min_version = "TLSv1" (RFC 8996 deprecates them: each such session is logged).
LEGACY_VERSIONS = ("TLSv1", "TLSv1.1")

# How long a closing connection may take to send its last reply before it is cut off.
CLOSE_GRACE = 5.0


class Connection(_AiosmtpdSMTP):
    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext,
        implicit_tls: bool,
        handshake_timeout: float,
        min_tls_version: str,
        proxy_from: tuple[proxyheader.Network, ...],
        on_close: Callable[[Connection], None],
        **smtp: Any,
    ) -> None:
        # STARTTLS is offered on plain listeners only.
        super().__init__(tls_context=None if implicit_tls else tls_context, **smtp)
        self.implicit_tls = implicit_tls
        self.handshake_timeout = handshake_timeout
        self.min_tls_version = min_tls_version
        self.proxy_from = proxy_from
        self.on_close = on_close
        self.counts: Counter[str] = Counter()
        self.stage = "CONNECT"
        self.closing = False  # the daemon is stopping: leave once the transaction ends
        self._handshake_context = tls_context
        # The TCP connection and the client's address, kept apart from aiosmtpd's
        # transport (which becomes the TLS one), so that a connection can always be
        # aborted and named.
        self._raw: asyncio.BaseTransport | None = None
        self._peer: tuple[str, int] | None = None
        self._prelude: proxyheader.Prelude | None = None  # until the PROXY header
        self._starting: asyncio.Task[None] | None = None
        self._upgrading = False  # a TLS handshake is under way
        self._released = False

    # --- what the SMTP session above says -------------------------------------------

    def in_transaction(self) -> bool:
        return False

    def forget_transaction(self) -> None:
        pass

    # --- start ----------------------------------------------------------------------

    @property
    def ip(self) -> str:
        return self._peer[0] if self._peer else "unknown"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport
        peer = transport.get_extra_info("peername")
        self._peer = (str(peer[0]), int(peer[1])) if peer else None
        if not self.proxy_from:
            self._start(transport, b"")
        elif not proxyheader.allowed(self.ip, self.proxy_from):
            maillog.proxy_refused(self.ip, "not a load balancer in [server] proxy_protocol")
            self._close_now()
        else:
            self._prelude = proxyheader.Prelude()
            self._starting = self.loop.create_task(self._after_proxy_header(transport))

    async def _after_proxy_header(self, raw: asyncio.BaseTransport) -> None:
        prelude = self._prelude
        assert prelude is not None and self._peer is not None
        balancer = self._peer
        try:
            self._peer = await proxyheader.client_address(prelude, balancer, self.handshake_timeout)
        except proxyheader.ProxyRefused as e:
            if prelude.received or not prelude.closed:
                maillog.proxy_refused(self.ip, str(e))
            else:  # the balancer's own TCP health check
                maillog.lost_connection(self.ip, "CONNECT")
            self._close_now()
            return
        self._prelude = None
        self._start(raw, prelude.rest)

    def _start(self, raw: asyncio.BaseTransport, early: bytes) -> None:
        maillog.connect(self.ip)
        if self.implicit_tls:  # the SMTP session starts once the handshake is done
            started = self._begin_tls(raw)
            started.feed(early)
            self._starting = self.loop.create_task(self._implicit_handshake(started))
            return
        super().connection_made(raw)
        if early:
            super().data_received(early)

    def data_received(self, data: bytes) -> None:
        if self._prelude is not None:
            self._prelude.feed(data)
        else:
            super().data_received(data)

    # --- TLS ------------------------------------------------------------------------

    async def _implicit_handshake(self, started: handshake.Handshake) -> None:
        tls = await self._upgrade(started, "implicit TLS")
        if tls is not None:
            super().connection_made(tls)

    def _begin_tls(self, raw: asyncio.BaseTransport) -> handshake.Handshake:
        self._upgrading = True
        return handshake.Handshake(raw, self, self._handshake_context, self.handshake_timeout)

    async def _upgrade(self, started: handshake.Handshake, where: str) -> asyncio.Transport | None:
        """The TLS transport, or None when the handshake failed: then the failure is
        logged, the connection closed and its slot given back."""
        try:
            tls = await started.result(self.min_tls_version)
        except handshake.HandshakeFailed as e:
            if e.kind == "closed":  # a health check or a port scan, not a TLS problem
                maillog.lost_connection(self.ip, "STARTTLS" if self.session else "CONNECT")
            else:
                maillog.tls_failed(self.ip, where, e.reason, e.kind)
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._release()
            return None
        finally:
            self._upgrading = False
        ssl_object = tls.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else None
        if version in LEGACY_VERSIONS:  # a [server] legacy_tls_listen listener's client
            maillog.legacy_tls(self.ip, where, version)
        return tls

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        self.counts["starttls"] += 1
        self.stage = "STARTTLS"
        if self._tls_protocol is not None or self.implicit_tls:
            await self.push(str(replies.TLS_ACTIVE))
            return
        if arg:
            await self.push(str(replies.syntax("STARTTLS")))
            return
        raw = cast(asyncio.WriteTransport, self.transport)
        assert raw is not None and self.session is not None
        # Written directly, and the TLS layer in place before anything else can run: the
        # client's ClientHello must not reach the SMTP reader.
        raw.write(f"{replies.STARTTLS_READY}\r\n".encode())
        # RFC 3207 4.2 and STARTTLS command injection: nothing the client sent in
        # plaintext after STARTTLS may be read as a command once encrypted.
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        tls = await self._upgrade(self._begin_tls(raw), "STARTTLS")
        if tls is None:
            assert self._handler_coroutine is not None
            self._handler_coroutine.cancel()  # the session is over; nothing to answer
            return
        # What aiosmtpd's connection_made does after its own STARTTLS: the streams now
        # read and write through TLS, and the session starts afresh (RFC 3207 4.2).
        self._original_transport = raw
        self._tls_protocol = tls  # type: ignore[assignment]  # aiosmtpd tests it for truth
        self._reader._transport = tls  # type: ignore[attr-defined]
        self._writer._transport = tls  # type: ignore[attr-defined]
        self.transport = tls
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.session = self._create_session()
        self.session.peer = self._peer  # type: ignore[assignment]
        self.session.ssl = {"ssl_object": tls.get_extra_info("ssl_object")}
        self.after_starttls()

    def after_starttls(self) -> None:
        """What the session forgets once encrypted (RFC 3207 4.2)."""

    # --- end ------------------------------------------------------------------------

    def connection_lost(self, error: Exception | None) -> None:
        if self.session is not None:  # aiosmtpd's state exists once SMTP has started
            super().connection_lost(error)
        if self._prelude is not None:  # the header reader ends it, and logs why
            self._prelude.feed_eof()
            return
        if self._upgrading:
            return  # the failed handshake is logged, and the slot given back, by _upgrade
        if self.in_transaction() or self.stage == "DATA":
            maillog.lost_connection(self.ip, self.stage)
        self._release()

    def eof_received(self) -> bool | None:
        if self._prelude is not None:
            self._prelude.feed_eof()
            return True  # closed by the header reader, once it has said why
        # aiosmtpd stops reading at EOF but asks to keep the connection half open, so
        # a client that connects and closes (a health check, a scanner) would hold its
        # slot until the idle timeout. A client that has closed its side ends the session.
        super().eof_received()
        return False

    def _release(self) -> None:
        """The connection is over: log it and give its slot back, once."""
        if not self._released:
            self._released = True
            maillog.disconnect(self.ip, self.counts)
            self.on_close(self)

    def _close_now(self) -> None:
        if self._raw is not None:
            self._raw.abort()  # type: ignore[attr-defined]
        self._release()

    def _timeout_cb(self) -> None:
        maillog.timeout(self.ip, self.stage)
        self.forget_transaction()
        self.hang_up(replies.TIMEOUT)

    def close_for_shutdown(self) -> None:
        """Say goodbye with 421 unless a transaction is under way (that one may finish)."""
        self.closing = True
        if not self.in_transaction():
            self.hang_up(replies.SHUTTING_DOWN)

    def hang_up(self, reply: Reply) -> None:
        """Send a final reply and close, without waiting for the client.

        A client that does not read would keep a closing transport (and its slot) for
        ever, waiting for its buffer to drain: it is cut off after a short grace."""
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is None or self._upgrading:  # nothing to say before SMTP started
            self._abort()
            return
        if not transport.is_closing():
            transport.write(f"{reply}\r\n".encode())
            transport.close()
            self.loop.call_later(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        if not self._released and self._raw is not None:
            self._raw.abort()  # type: ignore[attr-defined]


class Sessions:
    """The open connections of a listener: counted from accept until they end, told to
    leave on stop. ``on_change`` hears the count whenever it changes (a worker reports
    it to the main process)."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self.on_change = on_change
        self._open: set[Connection] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, connection: Connection) -> None:
        self._open.add(connection)
        self._idle.clear()
        if self.on_change is not None:
            self.on_change(len(self._open))

    def closed(self, connection: Connection) -> None:
        self._open.discard(connection)
        if self.on_change is not None:
            self.on_change(len(self._open))
        if not self._open:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Ask idle sessions to leave with 421; give transactions ``grace`` seconds."""
        for connection in list(self._open):
            connection.close_for_shutdown()
        if self._open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for connection in list(self._open):
            connection.hang_up(replies.SHUTTING_DOWN)
