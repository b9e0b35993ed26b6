"""Local submission: SMTP on a Unix socket, for ``smtprelay-sendmail`` (cron, PHP ``mail()``).

``[server] local_socket`` (``/run/smtprelay/submit.sock`` by default) is served by the
main process with the same SMTP session code as the TCP listeners, with the rules of
Postfix's local submission (sendmail -> postdrop -> pickup) rather than of a network
client:

* the caller may relay, as a trusted network may (who may connect at all is the socket
  file's mode and group, ``local_socket_mode`` / ``local_socket_group``); the sender and
  recipient domain allow-lists and the limits still apply; no AUTH, no TLS;
* the caller is the uid the kernel reports for the connection (``SO_PEERCRED``), logged
  as Postfix's pickup does: ``QID: uid=33 from=<www-data>``, and written into the
  ``Received:`` header (``by HOST (smtprelay, from userid 33)``);
* addresses without a domain get ``@[server] origin`` (Postfix's ``myorigin``): the
  envelope sender and recipients, and the address headers of the message (``From: root
  (Cron Daemon)`` -> ``From: root@ORIGIN (Cron Daemon)``), as Postfix's cleanup and Exim
  do for local submissions.

The socket file and the caller's uid: :mod:`.localsocket`; this module is the session,
its intake and the listener.

Why the main process serves it, also when ``[server] workers`` > 0: each submission is a
new ``smtprelay-sendmail`` process whose start costs far more CPU than its session costs
the daemon, so local submissions never reach the rates the workers exist for; and one
process owns the socket file (made at start, removed at stop) whatever the worker count,
with no change to how workers are started or replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from smtprelay import maillog, replies
from smtprelay.config import Settings
from smtprelay.envelope import Client, Envelope
from smtprelay.inbound.auth import Authenticator
from smtprelay.inbound.connection import Sessions
from smtprelay.inbound.handler import Intake, Transaction
from smtprelay.inbound.localsocket import SocketEndpoint, bind_socket, peer_uid, user_name
from smtprelay.inbound.policy import Policy
from smtprelay.inbound.protocol import Session
from smtprelay.inbound.qualify import qualify_command, qualify_headers
from smtprelay.inbound.server import Listeners, ListenerState, Refuse
from smtprelay.replies import Reply
from smtprelay.spool import Spool
from smtprelay.units import Endpoint

log = logging.getLogger("smtprelay")

LOCAL = maillog.LOCAL_CLIENT

__all__ = ["LocalServer", "LocalSession", "LocalSubmission", "bind_socket", "start", "wrap"]


class _LocalPolicy(Policy):
    """The relay policy of the settings, the caller counting as a trusted network."""

    def is_trusted(self, ip: str) -> bool:
        return True


@dataclass
class LocalIntake(Intake):
    """One local session's intake: the shared one's policy and spool, plus the caller."""

    origin: str = ""
    uid: int | None = None

    async def accept(self, txn: Transaction, client: Client, raw: bytes) -> Reply:
        return await super().accept(txn, client, qualify_headers(raw, self.origin))

    def received(self, txn: Transaction, client: Client, now: float) -> bytes:
        # Postfix's pickup: "Received: by host (Postfix, from userid 33)\n\tid QID; date".
        uid = "unknown" if self.uid is None else str(self.uid)
        stamp = format_datetime(datetime.fromtimestamp(int(now)).astimezone())
        return (
            f"Received: by {self.hostname} (smtprelay, from userid {uid})\r\n"
            f"\tid {txn.qid}; {stamp}\r\n"
        ).encode()


class LocalSession(Session):
    """An SMTP session on the local socket (see the module's description)."""

    def __init__(self, intake: LocalIntake, **kwargs: Any) -> None:
        super().__init__(intake, **kwargs)
        self.tls_context = None  # aiosmtpd's: no STARTTLS in EHLO
        self.local = intake
        self.uid: int | None = None
        self.user: str | None = None
        self.given_sender = ""

    @property
    def ip(self) -> str:
        return LOCAL

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            self.uid = self.local.uid = peer_uid(transport)
            self.user = None if self.uid is None else user_name(self.uid)
        super().connection_made(transport)

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        # Nothing to protect between two processes of this machine.
        self.counts["starttls"] += 1
        await self.push(replies.NO_STARTTLS)

    async def smtp_MAIL(self, arg: str | None) -> None:
        qualified, given = qualify_command(arg, self.local.origin)
        before = self.txn
        await super().smtp_MAIL(qualified)
        if self.txn is not None and self.txn is not before:
            self.given_sender = given if given is not None else self.txn.sender

    async def smtp_RCPT(self, arg: str | None) -> None:
        qualified, given = qualify_command(arg, self.local.origin)
        txn = self.txn
        if txn is not None and given:
            # "sendmail -t root" with "To: root@ORIGIN": one recipient, as Postfix's
            # cleanup removes duplicates; the caller cannot see that they are the same.
            address = given if "@" in given else f"{given}@{self.local.origin}"
            if any(r.address.lower() == address.lower() for r in txn.recipients):
                self.counts["rcpt"] += 1
                await self.push(replies.RECIPIENT_OK)
                return
        await super().smtp_RCPT(qualified)

    def log_client(self, txn: Transaction) -> None:
        maillog.pickup(txn.qid, self.uid, self.user, self.given_sender)


# --- the listener ------------------------------------------------------------------------------


# The session code wants a TLS context; the local socket never offers TLS.
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


@dataclass
class LocalServer:
    settings: Settings
    spool: Spool
    on_queued: Callable[[Envelope, bytes], None] | None
    path: str
    sock: socket.socket
    sessions: Sessions = field(default_factory=Sessions)
    server: asyncio.Server | None = None
    _inode: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        info = os.stat(self.path)
        self._inode = (info.st_dev, info.st_ino)

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            self._protocol, sock=self.sock, backlog=1024
        )

    def _protocol(self) -> asyncio.Protocol:
        server = self.settings.server
        # Its own share of max_connections: a flood on the TCP listeners cannot keep
        # cron's and PHP's mail out.
        if len(self.sessions) >= server.max_connections:
            return Refuse(server.max_connections, None, client=LOCAL)
        intake = LocalIntake(
            hostname=server.hostname,
            policy=_LocalPolicy(self.settings.relay, server.max_recipients),
            authenticator=None,  # never AUTH: the socket's permissions decide who submits
            spool=self.spool,
            max_message_size=server.max_message_size,
            on_queued=self.on_queued,
            origin=server.origin_domain,
        )
        session = LocalSession(
            intake,
            hostname=server.hostname,
            max_message_size=server.max_message_size,
            timeout=server.timeout,
            allow_plaintext_auth=False,
            tls_context=_NO_TLS,  # never used: STARTTLS is refused
            implicit_tls=False,
            handshake_timeout=self.settings.tls.handshake_timeout,
            min_tls_version=self.settings.tls.min_version,
            proxy_from=(),
            on_close=self.sessions.closed,
        )
        self.sessions.add(session)
        return session

    def state(self) -> ListenerState:
        serving = self.server is not None and self.server.is_serving()
        return ListenerState(SocketEndpoint(self.path, 0), False, serving, local=True)

    def apply(self, settings: Settings) -> None:
        """A reload: new sessions use the new policy, limits and origin; a new path,
        mode or group needs a restart."""
        old = self.settings.server
        new = settings.server
        for key in ("local_socket", "local_socket_mode", "local_socket_group"):
            if getattr(old, key) != getattr(new, key):
                log.warning("reload: [server] %s changes only on restart", key)
        self.settings = settings

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()  # bound but never served (the start failed elsewhere)
        # Remove the file unless something else has replaced it since.
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.path)

    async def drain(self, grace: float) -> None:
        await self.sessions.drain(grace)


class LocalSubmission:
    """The daemon's SMTP listeners (:class:`Listeners`, in-process or workers) together
    with the local socket, so start-up, reload, ``/status``, ``/healthz`` and the
    orderly stop treat it as one more listener."""

    def __init__(self, inner: Listeners, local: LocalServer) -> None:
        self.inner = inner
        self.local = local

    @property
    def endpoints(self) -> list[Endpoint]:
        return [*self.inner.endpoints, self.local.state().endpoint]

    def states(self) -> list[ListenerState]:
        return [*self.inner.states(), self.local.state()]

    @property
    def session_count(self) -> int:
        return self.inner.session_count + len(self.local.sessions)

    def apply(self, settings: Settings, authenticator: Authenticator | None) -> None:
        self.inner.apply(settings, authenticator)
        self.local.apply(settings)

    def close(self) -> None:
        self.inner.close()
        self.local.close()

    async def drain(self, grace: float) -> None:
        await asyncio.gather(self.inner.drain(grace), self.local.drain(grace))


def wrap(
    inner: Listeners,
    settings: Settings,
    spool: Spool,
    on_queued: Callable[[Envelope, bytes], None] | None,
    sock: socket.socket | None,
) -> Listeners:
    """``inner`` and the local socket ``sock`` (bound, not yet served) as one."""
    if sock is None:
        return inner
    path = settings.server.local_socket
    return LocalSubmission(inner, LocalServer(settings, spool, on_queued, path, sock))


async def start(listeners: Listeners) -> None:
    """Serve the local socket of :func:`wrap`'s result (nothing if it has none)."""
    if isinstance(listeners, LocalSubmission):
        await listeners.local.start()
