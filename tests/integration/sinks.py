"""Scriptable receiving SMTP servers (aiosmtpd) on 127.0.0.x, for the delivery tests.

A :class:`Sink` listens on one loopback address and port in its own thread and event
loop. It records every message it accepts (envelope, exact bytes, connection, TLS,
AUTH identity), counts connections (total, open now, most open at once) and
transactions in DATA at once, and can be told how to misbehave:

* per recipient: ``sink.rcpt_reply("bob@x.test", "450 4.2.1 try later", times=2)``
  (``times=None``: always);
* on connect: ``sink.on_connect("hang")`` (accept TCP, never greet), ``"drop"`` (greet,
  then close at the first command), or a reply such as ``"421 4.3.2 busy"`` as greeting;
* at the final dot: ``sink.on_data("hang")`` (stall, never answer), ``"drop"`` (close
  without answering), or a reply such as ``"451 4.3.0 later"``; ``sink.data_delay``
  seconds of delay before the answer;
* STARTTLS with a trustme certificate (``tls_cert``), AUTH PLAIN/LOGIN for one user,
  SMTPUTF8, and an idle timeout after which the sink closes the connection (421).

Every hang is bounded (``HANG_LIMIT``) and ends when the sink stops.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.integration.daemon import free_port as free_port_on

HANG_LIMIT = 60.0

# aiosmtpd logs every command (and a deprecation warning per AUTH) under "mail.log".
logging.getLogger("mail.log").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    connection: int  # the sink's number of the connection it came over (1, 2, ...)
    tls: bool
    auth_user: str | None
    at: float = field(default_factory=time.monotonic)

    def body(self) -> bytes:
        """The content after the relay's ``Received:`` header (and its folded lines)."""
        lines = self.content.split(b"\r\n")
        assert lines[0].startswith(b"Received: "), self.content[:200]
        i = 1
        while i < len(lines) and lines[i][:1] in (b"\t", b" "):
            i += 1
        return b"\r\n".join(lines[i:])


@dataclass
class _Scripted:
    action: str
    times: int | None  # None: every time

    def take(self) -> str | None:
        if self.times is None:
            return self.action
        if self.times > 0:
            self.times -= 1
            return self.action
        return None


def free_port(hosts: Iterable[str]) -> int:
    """A TCP port free on every one of ``hosts`` (bounded tries)."""
    hosts = list(hosts)
    for _ in range(50):
        port = free_port_on(hosts[0])  # outside the ephemeral range (see there)
        ok = True
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


class _Counted:
    """Connection bookkeeping shared by the SMTP and the misbehaving protocols."""

    sink: Sink
    conn_id: int = 0
    _sink_counted: bool = False

    def _sink_opened(self, transport: asyncio.BaseTransport) -> None:
        if not self._sink_counted:
            self._sink_counted = True
            self.conn_id = self.sink._conn_opened(transport)

    def _sink_closed(self) -> None:
        if self._sink_counted:
            self._sink_counted = False
            self.sink._conn_closed(self.conn_id)


class _SinkSMTP(_Counted, SMTP):
    def __init__(self, sink: Sink, **kwargs: Any) -> None:
        self.sink = sink
        super().__init__(sink, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not the TLS layer after STARTTLS
            self._sink_opened(transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._sink_closed()
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        # aiosmtpd does not advertise PIPELINING (it does read pipelined commands in
        # order): add it before the last EHLO line when the sink is asked to.
        if self.sink.pipelining and status == "250 HELP":
            await super().push("250-PIPELINING")
        await super().push(status)

    def data_received(self, data: bytes) -> None:
        if b"MAIL FROM:" in data and data.endswith(b"DATA\r\n"):  # one batch: RFC 2920
            self.sink.pipelined_batches += 1
        super().data_received(data)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.sink.starttls_reply is not None:  # offered, but refused when asked
            await self.push(self.sink.starttls_reply)
            return
        await super().smtp_STARTTLS(arg)


class _Silent(_Counted, asyncio.Protocol):
    """Accepts the TCP connection and never says anything (a hung server)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sink_opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sink_closed()


class _GreetThenDrop(_Silent):
    """Sends a greeting; on the first command closes the connection (or at once for 4xx)."""

    def __init__(self, sink: Sink, greeting: str, close_now: bool) -> None:
        super().__init__(sink)
        self.greeting = greeting
        self.close_now = close_now
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.greeting.encode() + b"\r\n")
        if self.close_now:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.close()


class Sink:
    """One receiving SMTP server on ``host:port``; ``start()`` / ``stop()`` or ``with``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str = "sink.test",
        tls_cert: trustme.LeafCert | None = None,
        auth: tuple[str, str] | None = None,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        data_delay: float = 0.0,
        smtputf8: bool = False,
        idle_timeout: float = 30.0,
        tls_max_version: ssl.TLSVersion | None = None,
        size_limit: int | None = None,
        pipelining: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.tls_context: ssl.SSLContext | None = None
        if tls_cert is not None:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_cert.configure_cert(self.tls_context)
            if tls_max_version is not None:  # e.g. TLSv1: a handshake the relay refuses
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.tls_context.maximum_version = tls_max_version
        self.smtputf8 = smtputf8
        self.starttls_reply: str | None = None  # e.g. "454 4.7.0 TLS not available"
        self.idle_timeout = idle_timeout
        self.size_limit = size_limit
        self.pipelining = pipelining
        self.pipelined_batches = 0  # segments holding MAIL .. DATA at once
        self.auth = auth
        self.auth_required = auth_required
        self.auth_require_tls = auth_require_tls
        self.data_delay = data_delay
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._rcpt_script: dict[str, _Scripted] = {}
        self._connect_script: _Scripted | None = None
        self._data_script: _Scripted | None = None
        self.rcpt_attempts: Counter[str] = Counter()
        self.auth_attempts: list[tuple[str, str, bool]] = []  # (mechanism, user, ok)
        self.connections = 0
        self.open_now = 0
        self.max_open = 0
        self.in_data_now = 0
        self.max_in_data = 0
        self._transports: dict[int, asyncio.BaseTransport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    # --- scripting --------------------------------------------------------------------

    def rcpt_reply(self, address: str, reply: str | None, times: int | None = None) -> None:
        """Answer RCPT TO:<address> with ``reply`` (the first ``times`` times; None = always)."""
        with self._lock:
            if reply is None:
                self._rcpt_script.pop(address.lower(), None)
            else:
                self._rcpt_script[address.lower()] = _Scripted(reply, times)

    def on_connect(self, action: str | None, times: int | None = None) -> None:
        """ "hang", "drop", a greeting reply like "421 4.3.2 busy", or None (normal)."""
        with self._lock:
            self._connect_script = None if action is None else _Scripted(action, times)

    def on_data(self, action: str | None, times: int | None = None) -> None:
        """At the final dot: "hang", "drop", a reply like "451 4.3.0 later", or None."""
        with self._lock:
            self._data_script = None if action is None else _Scripted(action, times)

    # --- what was seen ----------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def delivered_to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> Sink:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(self._factory, self.host, self.port)
                )
            except BaseException as e:
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"sink {self.host}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"sink {self.host}:{self.port} did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for transport in list(self._transports.values()):
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
                else:
                    transport.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(10)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inside the sink's loop -----------------------------------------------------

    def _factory(self) -> asyncio.Protocol:
        with self._lock:
            action = self._connect_script.take() if self._connect_script else None
        if action == "hang":
            return _Silent(self)
        if action == "drop":
            return _GreetThenDrop(self, f"220 {self.name} ESMTP sink", close_now=False)
        if action is not None:
            return _GreetThenDrop(self, action, close_now=True)
        kwargs: dict[str, Any] = {}
        if self.auth is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=self.auth_required,
                auth_require_tls=self.auth_require_tls,
            )
        return _SinkSMTP(
            self,
            hostname=self.name,
            ident="sink",
            tls_context=self.tls_context,
            timeout=self.idle_timeout,
            enable_SMTPUTF8=self.smtputf8,
            data_size_limit=self.size_limit or 33_554_432,
            **kwargs,
        )

    def _conn_opened(self, transport: asyncio.BaseTransport) -> int:
        with self._lock:
            self.connections += 1
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
            self._transports[self.connections] = transport
            return self.connections

    def _conn_closed(self, conn_id: int) -> None:
        with self._lock:
            self.open_now -= 1
            self._transports.pop(conn_id, None)

    def _authenticate(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.auth is not None
        ok = False
        user = ""
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode(errors="replace")
            ok = (user, auth_data.password.decode(errors="replace")) == self.auth
        with self._lock:
            self.auth_attempts.append((mechanism, user, ok))
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self._lock:
            self.rcpt_attempts[address.lower()] += 1
            script = self._rcpt_script.get(address.lower())
            reply = script.take() if script else None
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: _SinkSMTP, session: Any, envelope: Any) -> str:
        with self._lock:
            self.in_data_now += 1
            self.max_in_data = max(self.max_in_data, self.in_data_now)
            action = self._data_script.take() if self._data_script else None
        try:
            if self.data_delay:
                await asyncio.sleep(self.data_delay)
            if action == "hang":
                await asyncio.sleep(HANG_LIMIT)
                return "451 4.4.2 hung for too long"
            if action == "drop":
                assert isinstance(server.transport, asyncio.Transport)
                server.transport.abort()
                await asyncio.sleep(HANG_LIMIT)  # cancelled by connection_lost
                return "451 4.4.2 dropped"
            if action is not None:
                return action
            received = Received(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=bytes(envelope.original_content),
                connection=server.conn_id,
                tls=session.ssl is not None,
                auth_user=session.auth_data if session.authenticated else None,
            )
            with self._lock:
                self._messages.append(received)
            return "250 2.0.0 Ok: queued by sink"
        finally:
            with self._lock:
                self.in_data_now -= 1
