"""Helpers for the inbound tests (test_inbound, test_auth, test_limits, test_logs,
test_smuggling, test_proxy_protocol, test_slots): real smtplib sessions, a raw socket
client that sends exactly the bytes it is given, reply and log assertions.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from typing import Any

import pytest
import trustme

from smtprelay import replies
from smtprelay.replies import Reply
from tests.integration.daemon import LOOPBACK, Daemon
from tests.polling import wait_until

USER, PASSWORD = "app1", "secret-pw"
HELO = "client.test"
SENDER = "app@example.com"
RECIPIENT = "bob@example.net"
# The relay's 250 reply to DATA (replies.queued), as one reply line: the one pattern the
# tests read a queue ID with (qid_of).
QUEUED = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$")


def start_relay(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, **kwargs: Any) -> Daemon:
    """A daemon for a whole module (one user app1/secret-pw unless told otherwise)."""
    kwargs.setdefault("users", {USER: PASSWORD})
    return Daemon(tmp_path_factory.mktemp("relay"), ca, **kwargs).start()


def client_context(daemon: Daemon) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(daemon.ca_file))


def line(code: int, text: bytes | str) -> str:
    """smtplib's (code, text) as the reply line the server sent."""
    return f"{code} {text.decode() if isinstance(text, bytes) else text}"


def assert_reply(actual: str, expected: Reply) -> None:
    """``actual`` is a reply line carrying ``expected``'s basic and enhanced code."""
    prefix = f"{expected.code} {expected.enhanced} "
    assert actual.startswith(prefix), f"expected {prefix!r}..., got {actual!r}"


def qid_of(reply_line: str) -> str:
    match = QUEUED.match(reply_line)
    assert match, f"not a 'queued as' reply: {reply_line!r}"
    return match.group(1)


def submit(
    client: smtplib.SMTP,
    message: bytes,
    sender: str = SENDER,
    recipients: tuple[str, ...] = (RECIPIENT,),
    options: tuple[str, ...] = (),
) -> str:
    """MAIL, RCPT..., DATA with smtplib; returns the QID of the 250 reply."""
    code, text = client.mail(sender, list(options))
    assert_reply(line(code, text), replies.SENDER_OK)
    for recipient in recipients:
        code, text = client.rcpt(recipient)
        assert_reply(line(code, text), replies.RECIPIENT_OK)
    code, text = client.data(message)
    return qid_of(line(code, text))


def smtp(daemon: Daemon, port: int | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP(LOOPBACK, port or daemon.port, local_hostname=HELO, timeout=15)
    client.ehlo()
    return client


def authenticated(daemon: Daemon) -> smtplib.SMTP:
    client = smtp(daemon)
    client.starttls(context=client_context(daemon))
    client.ehlo()
    client.login(USER, PASSWORD)
    return client


def wait_for_log(
    daemon: Daemon, pattern: str, start: int = 0, timeout: float = 5.0
) -> re.Match[str]:
    """The first match of the regex ``pattern`` (multiline) in the log after ``start``."""
    regex = re.compile(pattern, re.MULTILINE)
    try:
        return wait_until(lambda: regex.search(daemon.log()[start:]), timeout, pattern)
    except AssertionError:
        raise AssertionError(
            f"log has no line matching {pattern!r}:\n{daemon.log()[start:][-4000:]}"
        ) from None


def assert_log(daemon: Daemon, pattern: str, start: int = 0) -> re.Match[str]:
    """Like wait_for_log, without waiting: for lines logged before the reply was sent."""
    match = re.search(pattern, daemon.log()[start:], re.MULTILINE)
    assert match, f"log has no line matching {pattern!r}:\n{daemon.log()[start:][-4000:]}"
    return match


def log_mark(daemon: Daemon) -> int:
    return len(daemon.log())


def split_received(eml: bytes) -> tuple[bytes, bytes]:
    """(the Received: header this relay prepended, everything after it)."""
    assert eml.startswith(b"Received: "), eml[:200]
    end = 0
    for _ in range(50):  # the header has a handful of folded lines
        nl = eml.index(b"\r\n", end) + 2
        end = nl
        if eml[end : end + 1] not in (b"\t", b" "):
            break
    return eml[:end], eml[end:]


def assert_crlf_only(data: bytes) -> None:
    """Every CR is followed by LF and every LF preceded by CR."""
    assert data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n"), (
        f"bare CR or LF in {data!r}"
    )


class RawClient:
    """A plain-socket SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock: socket.socket = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.buffer = b""
        self.greeting = self.reply()

    def _line(self) -> str:
        for _ in range(1000):
            if b"\r\n" in self.buffer:
                raw, _, self.buffer = self.buffer.partition(b"\r\n")
                return raw.decode("utf-8", "replace")
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed; unparsed {self.buffer!r}")
            self.buffer += data
        raise AssertionError(f"no end of line in {self.buffer[:200]!r}")

    def reply(self) -> list[str]:
        """All lines of one reply (multi-line replies use ``NNN-``)."""
        lines = []
        for _ in range(100):
            text = self._line()
            lines.append(text)
            if text[3:4] != "-":
                return lines
        raise AssertionError(f"endless multi-line reply: {lines}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, command: bytes | str) -> str:
        """Send one command line (CRLF added) and return the last line of the reply."""
        if isinstance(command, str):
            command = command.encode()
        self.send(command + b"\r\n")
        return self.reply()[-1]

    def ehlo(self, name: str = HELO) -> list[str]:
        self.send(f"EHLO {name}\r\n".encode())
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> str:
        ready = self.cmd("STARTTLS")
        if ready.startswith("220"):
            self.sock = context.wrap_socket(self.sock, server_hostname=LOOPBACK)
        return ready

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes; returns what it sent meanwhile."""
        self.sock.settimeout(timeout)
        received = self.buffer
        for _ in range(1000):
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data
        raise AssertionError("server kept talking instead of closing")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
