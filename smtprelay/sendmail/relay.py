"""Where the message goes and the connection to it: the daemon's local submission socket,
or the ``[server] listen`` addresses; the greeting checked."""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Not smtprelay.config: pydantic costs more CPU than all the rest of a run, and a caller
# who cannot read the configuration does not need it (imported in find_relay otherwise).
from smtprelay import defaults
from smtprelay.sendmail.exits import EX_CONFIG, EX_TEMPFAIL, EX_UNAVAILABLE, SubmissionFailed

if TYPE_CHECKING:
    from smtprelay import config

CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 300.0  # RFC 5321 4.5.3.2: 5 minutes for commands (and here the final dot)


def _local_host(host: str) -> str:
    """A wildcard listen address is reached through loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def reply_text(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {'; '.join(text.splitlines())}".strip()


def is_temporary(code: int) -> bool:
    return code < 500  # 4xx, and an unreadable reply (-1): a protocol error, try again


@dataclass(frozen=True)
class Relay:
    """Where the message goes: the daemon's local socket, or (``socket`` None) the
    ``[server] listen`` addresses of ``settings``."""

    socket: str | None
    settings: config.Settings | None
    # Why the configuration was not read (the default socket is tried instead).
    unreadable: str | None = None

    @property
    def max_recipients(self) -> int:
        if self.settings is None:
            return defaults.DEFAULT_MAX_RECIPIENTS
        return self.settings.server.max_recipients


class _UnixSMTP(smtplib.SMTP):
    """smtplib on a Unix stream socket (the daemon's local submission socket)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # The name in EHLO: the session is local, no name lookup is worth its delay.
        super().__init__(local_hostname="localhost", timeout=CONNECT_TIMEOUT)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock


def connect(relay: Relay, verbose: bool) -> tuple[smtplib.SMTP, str]:
    if relay.socket is not None:
        return connect_socket(relay, verbose)
    assert relay.settings is not None
    return connect_tcp(relay.settings, verbose)


def connect_socket(relay: Relay, verbose: bool) -> tuple[smtplib.SMTP, str]:
    path = relay.socket
    assert path is not None
    smtp = _UnixSMTP(path)
    smtp.set_debuglevel(1 if verbose else 0)
    try:
        code, greeting = smtp.connect(path)
    except OSError as e:
        smtp.close()
        reason = f"the relay is not reachable at {path} ({e.strerror or e})"
        if relay.unreadable is None:
            raise SubmissionFailed(EX_TEMPFAIL, reason) from None
        # No configuration to read and no daemon at the default socket. Installed (the
        # file exists, it is just not ours to read): the daemon is down, try again later.
        # Not installed, or the wrong -C: a configuration error.
        code = EX_CONFIG if "No such file" in relay.unreadable else EX_TEMPFAIL
        raise SubmissionFailed(
            code, f"configuration error: {relay.unreadable}, and {reason}"
        ) from None
    _check_greeting(smtp, code, greeting, path)
    return smtp, path


def _check_greeting(smtp: smtplib.SMTP, code: int, greeting: bytes, where: str) -> None:
    if code != 220:
        smtp.close()
        reply = reply_text(code, greeting)
        if is_temporary(code):
            raise SubmissionFailed(EX_TEMPFAIL, f"relay at {where} is not accepting mail: {reply}")
        raise SubmissionFailed(EX_UNAVAILABLE, f"relay at {where} refused the session: {reply}")
    if smtp.sock is not None:
        smtp.sock.settimeout(COMMAND_TIMEOUT)


def connect_tcp(settings: config.Settings, verbose: bool) -> tuple[smtplib.SMTP, str]:
    """The first ``[server] listen`` address that answers (then the implicit TLS ones)."""
    hostname = settings.server.hostname
    candidates = [(e, False) for e in settings.server.listen]
    candidates += [(e, True) for e in settings.server.listen_implicit_tls]
    if not candidates:
        raise SubmissionFailed(EX_CONFIG, "[server] listen: no address to hand the message to")
    errors: list[str] = []
    for endpoint, implicit_tls in candidates:
        host = _local_host(endpoint.host)
        where = f"[{host}]:{endpoint.port}" if ":" in host else f"{host}:{endpoint.port}"
        smtp: smtplib.SMTP
        if implicit_tls:
            # The daemon on this machine, often with a self-signed certificate: the
            # connection is local, TLS here only because that listener requires it.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            smtp = smtplib.SMTP_SSL(
                local_hostname=hostname, timeout=CONNECT_TIMEOUT, context=context
            )
        else:
            smtp = smtplib.SMTP(local_hostname=hostname, timeout=CONNECT_TIMEOUT)
        smtp.set_debuglevel(1 if verbose else 0)
        try:
            code, greeting = smtp.connect(host, endpoint.port)
        except OSError as e:
            smtp.close()
            errors.append(f"{where}: {e.strerror or e}")
            continue
        _check_greeting(smtp, code, greeting, where)
        return smtp, where
    raise SubmissionFailed(EX_TEMPFAIL, "the relay is not reachable (" + "; ".join(errors) + ")")


def find_relay(path: Path) -> Relay:
    """The configured local socket; the default one when the file cannot be read (a
    ``0640 root:smtprelay`` file and a ``www-data`` caller); the ``[server] listen``
    addresses when it sets ``local_socket = ""``. SubmissionFailed (78) if the file is invalid."""
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        return Relay(defaults.DEFAULT_LOCAL_SOCKET, None, f"{path}: {e.strerror or e}")
    from smtprelay import config  # only now: see the import of defaults

    try:
        settings = config.load(path)
    except config.ConfigError as e:
        raise SubmissionFailed(EX_CONFIG, f"configuration error: {e}") from None
    return Relay(settings.server.local_socket or None, settings)
