"""Helpers for the delivery tests; their fixtures are in delivery_fixtures.py.

The relay under test runs as a real daemon (tests.integration.daemon); its delivery
stage is pointed at a real DNS server on a loopback port (dns_server.py) and real
receiving SMTP servers on 127.0.0.x (sinks.py). Nothing outside 127.0.0.0/8 and ::1 is
ever contacted: the zone only holds loopback addresses and every test names the
nameserver explicitly.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.inbound_support import line, qid_of
from tests.integration.sinks import Sink
from tests.polling import wait_until

# Loopback addresses of the receiving servers; DOWN has no listener unless a test
# puts a misbehaving one there.
MX1, MX2, MX3, DOWN = "127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.4"
SENDER = "app@sender.test"
DELIVERY = re.compile(
    r"smtprelay/smtp\[\d+\]: (?P<qid>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>, "
    r"relay=(?P<relay>\S+), delay=(?P<delay>[\d.]+), delays=(?P<delays>[\d./]+), "
    r"dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), status=(?P<status>\w+) \((?P<reply>.*)\)$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class LogDelivery:
    qid: str
    to: str
    relay: str
    delay: float
    delays: str
    dsn: str
    status: str
    reply: str


# --- submitting ----------------------------------------------------------------------------


def make_message(tag: str | int, *, sender: str = SENDER, extra: str = "") -> bytes:
    """A message with Date and Message-ID, so the relay adds nothing but Received:."""
    return (
        f"From: <{sender}>\r\n"
        f"To: <undisclosed-recipients>\r\n"
        f"Subject: delivery test {tag}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <{tag}.{time.monotonic_ns()}@sender.test>\r\n"
        f"X-Tag: {tag}\r\n"
        f"\r\n"
        f"Body of message {tag}.\r\n"
        f".A line that starts with a dot, to be stuffed and unstuffed.\r\n"
        f"{extra}"
        f"end {tag}\r\n"
    ).encode()


def send(
    client: smtplib.SMTP,
    recipients: list[str],
    data: bytes,
    sender: str = SENDER,
    mail_options: tuple[str, ...] = (),
) -> str:
    """One transaction on an open connection; returns the queue ID from the 250 reply."""
    code, reply = client.mail(sender, list(mail_options))
    assert code == 250, reply
    for rcpt in recipients:
        code, reply = client.rcpt(rcpt)
        assert code == 250, (rcpt, reply)
    code, reply = client.data(data)
    assert code == 250, reply
    return qid_of(line(code, reply))


def submit(daemon: Daemon, recipients: list[str], data: bytes, sender: str = SENDER) -> str:
    with smtplib.SMTP(LOOPBACK, daemon.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        return send(c, recipients, data, sender)


# --- observing -----------------------------------------------------------------------------


def deliveries(daemon: Daemon, qid: str | None = None, to: str | None = None) -> list[LogDelivery]:
    """The ``QID: to=<...>, relay=..., status=...`` lines of the daemon log, in order."""
    found = []
    for m in DELIVERY.finditer(daemon.log()):
        if (qid is None or m["qid"] == qid) and (to is None or m["to"] == to):
            found.append(
                LogDelivery(
                    m["qid"],
                    m["to"],
                    m["relay"],
                    float(m["delay"]),
                    m["delays"],
                    m["dsn"],
                    m["status"],
                    m["reply"],
                )
            )
    return found


def statuses(daemon: Daemon, qid: str, to: str) -> list[str]:
    return [d.status for d in deliveries(daemon, qid, to)]


def removed(daemon: Daemon, qid: str) -> bool:
    return (
        re.search(rf"smtprelay/qmgr\[\d+\]: {qid}: removed$", daemon.log(), re.MULTILINE)
        is not None
    )


def wait_removed(daemon: Daemon, qid: str, timeout: float = 20.0) -> None:
    wait_until(lambda: removed(daemon, qid), timeout, lambda: f"{qid}: removed\n{daemon.log()}")
    assert qid not in daemon.queued_ids()


def wait_status(
    daemon: Daemon, qid: str, to: str, status: str, count: int = 1, timeout: float = 20.0
) -> list[LogDelivery]:
    """Wait for ``count`` delivery lines with ``status`` for ``to``; return them."""

    def seen() -> list[LogDelivery]:
        return [d for d in deliveries(daemon, qid, to) if d.status == status]

    wait_until(
        lambda: len(seen()) >= count,
        timeout,
        lambda: f"{count}x {qid}: to=<{to}> status={status}\n{daemon.log()}",
    )
    return seen()


def envelope_when(
    daemon: Daemon, qid: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """Poll the spooled envelope JSON until ``predicate`` holds; return it."""
    holder: list[dict[str, Any]] = []

    def check() -> bool:
        try:
            envelope = daemon.envelope(qid)
        except (FileNotFoundError, ValueError):
            return False
        if predicate(envelope):
            holder.append(envelope)
            return True
        return False

    wait_until(check, timeout, lambda: f"envelope of {qid} in the expected state\n{daemon.log()}")
    return holder[0]


def recipient_state(envelope: dict[str, Any], address: str) -> dict[str, Any]:
    (found,) = [r for r in envelope["recipients"] if r["address"] == address]
    return found  # type: ignore[no-any-return]


def relay_of(name: str, ip: str, port: int) -> str:
    return f"{name}[{ip}]:{port}"


def assert_delivered_intact(
    sink: Sink, qid: str, data: bytes, recipients: list[str], sender: str = SENDER
) -> None:
    """The sink got exactly one copy for these recipients: Received: + the exact bytes."""
    copies = [m for m in sink.messages if m.body() == data]
    assert len(copies) == 1, f"{len(copies)} copies of {qid} at {sink.host}"
    (copy,) = copies
    assert sorted(copy.rcpt_tos) == sorted(recipients)
    assert copy.mail_from == sender
    first = copy.content.split(b"\r\n", 2)
    assert first[0].startswith(b"Received: from client.test (unknown [127.0.0.1])"), first
    assert re.fullmatch(
        rf"\tby relay\.test \(smtprelay\) with \w+ id {qid};?".encode(), first[1]
    ), first
