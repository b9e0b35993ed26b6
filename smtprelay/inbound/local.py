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

Why the main process serves it, also when ``[server] workers`` > 0: each submission is a
new ``smtprelay-sendmail`` process whose start costs far more CPU than its session costs
the daemon, so local submissions never reach the rates the workers exist for; and one
process owns the socket file (made at start, removed at stop) whatever the worker count,
with no change to how workers are started or replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import grp
import logging
import os
import pwd
import re
import socket
import ssl
import stat
import struct
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
from smtprelay.inbound.policy import Policy
from smtprelay.inbound.protocol import Session
from smtprelay.inbound.server import Listeners, ListenerState, Refuse
from smtprelay.replies import Reply
from smtprelay.spool import Spool
from smtprelay.units import Endpoint

log = logging.getLogger("smtprelay")

LOCAL = maillog.LOCAL_CLIENT

# --- addresses without a domain ------------------------------------------------------------

# Headers whose addresses are qualified (Postfix's cleanup rewrites the same set).
ADDRESS_HEADERS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "apparently-to",
        "errors-to",
        "return-receipt-to",
        "disposition-notification-to",
        "resent-from",
        "resent-sender",
        "resent-reply-to",
        "resent-to",
        "resent-cc",
        "resent-bcc",
    }
)
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_SPECIALS = '()<>[]:;@\\,."'
# MAIL FROM:<addr> / RCPT TO:<addr>, or the same without brackets.
_COMMAND_PATH = re.compile(r"^(\s*(?:FROM|TO):\s*)(<[^<>]*>|[^\s<>]+)(.*)$", re.I | re.S)


def qualify_command(arg: str | None, origin: str) -> tuple[str | None, str | None]:
    """``FROM:<root> SIZE=9`` -> (``FROM:<root@ORIGIN> SIZE=9``, ``root``): the command
    argument with a domainless path qualified, and the path as given (None if none)."""
    match = _COMMAND_PATH.match(arg or "")
    if match is None:
        return arg, None
    head, path, rest = match.groups()
    bracketed = path.startswith("<")
    address = path[1:-1] if bracketed else path
    if not address or "@" in address or any(c.isspace() or c == '"' for c in address):
        return arg, address
    qualified = f"{address}@{origin}"
    return head + (f"<{qualified}>" if bracketed else qualified) + rest, address


def qualify_headers(raw: bytes, origin: str) -> bytes:
    """The message with ``@origin`` added to every domainless address in its address
    headers. Works on the bytes as received (line endings and dot-stuffing untouched:
    no header it changes can start with a dot), and leaves everything else as it was."""
    pos = 0
    fields: list[list[int]] = []  # [start, end] of each header field
    names: list[bytes] = []
    while (line := _LINE.match(raw, pos)) is not None and line.group(1):
        content = line.group(1)
        if content[:1] in (b" ", b"\t") and fields:
            fields[-1][1] = line.end()
        elif (named := _FIELD_NAME.match(content)) is not None:
            fields.append([pos, line.end()])
            names.append(named.group(1).lower())
        else:
            break  # not a header: the body starts here (no empty line)
        pos = line.end()
    out: list[bytes] = []
    done = 0
    for (start, end), name in zip(fields, names, strict=True):
        if name.decode("ascii") not in ADDRESS_HEADERS:
            continue
        text = raw[start:end].decode("utf-8", "surrogateescape")
        label, colon, value = text.partition(":")
        new = qualify_address_list(value, origin)
        if new != value:
            out += [raw[done:start], (label + colon + new).encode("utf-8", "surrogateescape")]
            done = end
    if not out:
        return raw
    out.append(raw[done:])
    return b"".join(out)


@dataclass
class _Token:
    kind: str  # "word", "dot", "at", "space"
    start: int
    end: int


def qualify_address_list(value: str, origin: str) -> str:
    """An RFC 5322 address list with ``@origin`` after every local part that has no
    domain: ``root (Cron Daemon)`` -> ``root@origin (Cron Daemon)``, ``Bob <bob>`` ->
    ``Bob <bob@origin>``. Comments, quoting, folding and groups stay as they were; a
    phrase that is not an address (``Cron Daemon``) and anything malformed is left."""
    inserts: list[int] = []
    tokens: list[_Token] = []
    angle = False  # the current address had an <angle-addr>

    def finish() -> None:
        nonlocal angle
        if not angle:
            end = _local_part_end(tokens)
            if end is not None:
                inserts.append(end)
        tokens.clear()
        angle = False

    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            j = _skip_quoted(value, i)
            tokens.append(_Token("word", i, j))
        elif c == "(":
            j = _skip_comment(value, i)
        elif c == "<":
            j = value.find(">", i)
            if j < 0:
                return value  # malformed: leave it alone
            inner = value[i + 1 : j].strip()
            if (
                inner
                and "@" not in inner
                and ":" not in inner
                and not any(ch.isspace() or ch in '"\\()<,;' for ch in inner)
            ):
                inserts.append(i + 1 + len(value[i + 1 : j].rstrip()))
            angle = True
            j += 1
        elif c in ",;":
            finish()
            j = i + 1
        elif c == ":":  # "Group name:" -- what came before was the group's name
            tokens.clear()
            angle = False
            j = i + 1
        elif c in "@.":
            tokens.append(_Token("at" if c == "@" else "dot", i, i + 1))
            j = i + 1
        elif c.isspace():
            j = i + 1
            while j < n and value[j].isspace():
                j += 1
            tokens.append(_Token("space", i, j))
        else:
            j = i + 1
            while j < n and not value[j].isspace() and value[j] not in _SPECIALS:
                j += 1
            tokens.append(_Token("word", i, j))
        i = j
    finish()
    for at in sorted(inserts, reverse=True):
        value = f"{value[:at]}@{origin}{value[at:]}"
    return value


def _local_part_end(tokens: list[_Token]) -> int | None:
    """Where a bare ``word(.word)*`` address without ``@`` ends; None if it is not one
    (two words with only a space between them are a phrase, not an address)."""
    seq = list(tokens)
    while seq and seq[0].kind == "space":
        seq.pop(0)
    while seq and seq[-1].kind == "space":
        seq.pop()
    kept = [
        t
        for k, t in enumerate(seq)
        if not (t.kind == "space" and "dot" in (seq[k - 1].kind, seq[k + 1].kind))
    ]
    kinds = [t.kind for t in kept]
    if not kinds or kinds != ["word", *["dot", "word"] * ((len(kinds) - 1) // 2)]:
        return None
    return kept[-1].end


def _skip_quoted(text: str, i: int) -> int:
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == '"':
            return j + 1
        else:
            j += 1
    return len(text)


def _skip_comment(text: str, i: int) -> int:
    depth, j = 0, i
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return len(text)


# --- the caller ------------------------------------------------------------------------------


def peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


@functools.lru_cache(maxsize=64)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


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


class SocketEndpoint(Endpoint):
    """A Unix socket in the listener lists (``/status``, the start-up line): its path."""

    def __str__(self) -> str:
        return self.host


def bind(path: str, mode: int, group: str) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode`` (and ``group``); a stale socket
    file left by a killed daemon is replaced, a live one is not. OSError names the key."""
    key = "[server] local_socket"
    try:
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError:
        raise OSError(errno.EINVAL, f"[server] local_socket_group: no group {group!r}") from None
    directory = os.path.dirname(path)
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory)
            # Made here (not by systemd's RuntimeDirectory=): anyone may reach the socket;
            # its own mode decides who may connect.
            os.chmod(directory, 0o755)
        _remove_stale(path)
    except OSError as e:
        raise OSError(e.errno, f"{key} {path}: {e.strerror or e}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        try:
            # Before listen(): until then a connect is refused, so nobody gets in
            # under the mode the umask gave the new file.
            os.chmod(path, mode)
            if gid != -1:
                os.chown(path, -1, gid)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            os.unlink(path)
            raise
    except OSError as e:
        sock.close()
        what = "[server] local_socket_group" if e.errno == errno.EPERM and gid != -1 else key
        raise OSError(e.errno, f"{what} {path}: {e.strerror or e}") from None
    return sock


def _remove_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # nobody listens: left by a daemon that was killed
            return
    raise OSError(errno.EADDRINUSE, "another process is listening on it")


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


def bind_socket(settings: Settings) -> socket.socket | None:
    """The listening ``[server] local_socket``, or None when it is ``""``. Left at its
    default, a socket that cannot be made (``make run`` as a user who may not write
    /run) is a warning and None; set explicitly, an OSError that stops the start."""
    server = settings.server
    if not server.local_socket:
        return None
    try:
        return bind(server.local_socket, server.local_socket_mode, server.local_socket_group)
    except OSError as e:
        if "local_socket" not in server.model_fields_set and e.errno in (
            errno.EACCES,
            errno.EPERM,
            errno.EROFS,
        ):
            log.warning(
                "local submission off: %s (set [server] local_socket to a path "
                'this user may create, or to "" to turn it off)',
                e.strerror,
            )
            return None
        raise


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
