"""Helpers for the bounce and DSN tests (test_bounces*.py).

Set-up shared by those tests: the relay delivers by MX through the test DNS server;
"dest.test" (and "other.test") go to a scripted sink on MX1 that refuses or defers
recipients, "sender.test" goes to a sink on MX2 that plays the sender's mailbox and
collects the notices, and "admin.test" goes to a sink on MX3 (postmaster, admin copy).

The fixtures (``zone``, ``dest``, ``mailbox``, ``admin``) are in bounce_fixtures.py.

A DSN is read as a recipient's software would: parsed with the ``email`` package
(policy.default), fed to ``flufl.bounce``, and -- for the returned message, whose bytes
must be carried exactly -- cut out of the raw bytes at the MIME boundary.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.inbound_support import line, qid_of
from tests.integration.sinks import Received, Sink
from tests.polling import wait_until

SENDER = "app@sender.test"
POSTMASTER = "postmaster@admin.test"
ADMIN = "admin@admin.test"

NOTICE_LINE = re.compile(
    r"smtprelay/bounce\[\d+\]: (?P<qid>[0-9A-Za-z]+): (?P<words>[a-z -]+ notification): "
    r"(?P<notice>[0-9A-Za-z]+)$",
    re.MULTILINE,
)
ERROR_LINE = re.compile(r"smtprelay/\w+\[\d+\]: (?:[0-9A-Za-z]+: )?(?:error|fatal|panic): ")
FAILURE_WORDS = "sender non-delivery notification"
DELAY_WORDS = "sender delay notification"
SUCCESS_WORDS = "sender delivery status notification"
POSTMASTER_WORDS = "postmaster non-delivery notification"


# --- checks --------------------------------------------------------------------------------


def assert_clean_log(relay: Daemon) -> None:
    log = relay.log()
    assert "Traceback" not in log, log
    assert not ERROR_LINE.search(log), log


# --- submitting ----------------------------------------------------------------------------


def submit(
    daemon: Daemon,
    recipients: Sequence[str] | Mapping[str, Sequence[str]],
    data: bytes,
    *,
    sender: str = SENDER,
    mail_options: Sequence[str] = (),
) -> str:
    """One transaction on a fresh connection; ``recipients`` may map each address to its
    RCPT parameters (``{"bob@dest.test": ["NOTIFY=NEVER"]}``). Returns the queue ID."""
    rcpts: Mapping[str, Sequence[str]] = (
        recipients if isinstance(recipients, Mapping) else {r: () for r in recipients}
    )
    with smtplib.SMTP(LOOPBACK, daemon.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        assert c.has_extn("dsn"), "the relay must advertise DSN"
        code, reply = c.mail(sender, list(mail_options))
        assert code == 250, reply
        for rcpt, options in rcpts.items():
            code, reply = c.rcpt(rcpt, list(options))
            assert code == 250, (rcpt, reply)
        code, reply = c.data(data)
        assert code == 250, reply
    return qid_of(line(code, reply))


def message(tag: str, *, sender: str = SENDER, body: str = "") -> bytes:
    """A plain ASCII message with Date and Message-ID (the relay adds only Received:)."""
    return (
        f"From: <{sender}>\r\n"
        f"To: <undisclosed-recipients>\r\n"
        f"Subject: bounce test {tag}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <{tag}@sender.test>\r\n"
        f"X-Tag: {tag}\r\n"
        f"\r\n"
        f"Body of message {tag}.\r\n"
        f"{body}"
        f"end {tag}\r\n"
    ).encode()


# --- observing the notices ------------------------------------------------------------------


def notices_at(sink: Sink) -> list[Received]:
    """Messages the sink received from the null sender, in order."""
    return [m for m in sink.messages if m.mail_from in ("", "<>")]  # aiosmtpd says "<>"


def wait_notices(sink: Sink, count: int, daemon: Daemon, timeout: float = 15.0) -> list[Received]:
    wait_until(
        lambda: len(notices_at(sink)) >= count,
        timeout,
        lambda: f"{count} notice(s) at {sink.host}\n{daemon.log()}",
    )
    return notices_at(sink)


def notice_links(daemon: Daemon, qid: str | None = None) -> list[tuple[str, str, str]]:
    """``(qid, words, notice qid)`` of each ``QID: ... notification: NEWQID`` log line."""
    return [
        (m["qid"], m["words"], m["notice"])
        for m in NOTICE_LINE.finditer(daemon.log())
        if qid is None or m["qid"] == qid
    ]


def queue_empty(daemon: Daemon) -> bool:
    return daemon.queued_ids() == []


def wait_queue_empty(daemon: Daemon, timeout: float = 15.0) -> None:
    wait_until(
        lambda: queue_empty(daemon),
        timeout,
        lambda: f"empty queue, still {daemon.queued_ids()}\n{daemon.log()}",
    )


# --- reading a DSN --------------------------------------------------------------------------


def parse(content: bytes) -> EmailMessage:
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@dataclass(frozen=True)
class Report:
    """A DSN as parsed by the ``email`` package, plus its raw MIME parts."""

    raw: bytes
    msg: EmailMessage
    text: Message
    status: Message
    returned: Message
    per_message: Message
    per_recipient: list[Message]
    raw_parts: list[bytes]  # each part as bytes: its header section, blank line, body

    def recipient(self, address: str) -> Message:
        found = [
            b
            for b in self.per_recipient
            if b["Final-Recipient"].split(";", 1)[1].strip() == address
        ]
        assert len(found) == 1, (address, [str(b) for b in self.per_recipient])
        return found[0]

    def final_recipients(self) -> list[str]:
        return sorted(b["Final-Recipient"].split(";", 1)[1].strip() for b in self.per_recipient)

    def returned_body(self) -> bytes:
        """The returned message (or header section) exactly as carried, as bytes."""
        part = self.raw_parts[2]
        return part.split(b"\r\n\r\n", 1)[1]

    def text_body(self) -> str:
        payload = self.text.get_payload(decode=True)
        assert isinstance(payload, bytes)
        charset = self.text.get_content_charset() or "us-ascii"
        return payload.decode(charset)


def read_report(content: bytes, status_type: str = "message/delivery-status") -> Report:
    """Parse a DSN and check the RFC 3464 / RFC 6522 frame every DSN must have."""
    msg = parse(content)
    assert not msg.defects, msg.defects
    assert msg.get_content_type() == "multipart/report", msg["Content-Type"]
    report_type = status_type.removeprefix("message/")
    assert msg.get_param("report-type") == report_type, msg["Content-Type"]
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"] is not None and msg["Message-ID"] is not None
    payload = msg.get_payload()
    assert isinstance(payload, list)
    parts = [p for p in payload if isinstance(p, Message)]
    assert len(parts) == len(payload) == 3, [p.get_content_type() for p in parts]
    text, status, returned = parts
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == status_type
    if status_type == "message/delivery-status":
        # The email package parses message/delivery-status into its field blocks.
        fields = status.get_payload()
        assert isinstance(fields, list) and len(fields) >= 2, fields
        blocks = [b for b in fields if isinstance(b, Message)]
        assert len(blocks) == len(fields), fields
    else:  # message/global-delivery-status is opaque to it: parse the blocks ourselves
        raw = _split_parts(content, msg)[1].split(b"\r\n\r\n", 1)[1]
        blocks = [
            email.message_from_string(b + "\r\n", policy=email.policy.default)
            for b in raw.decode("utf-8").rstrip("\r\n").split("\r\n\r\n")
        ]
    return Report(
        raw=content,
        msg=msg,
        text=text,
        status=status,
        returned=returned,
        per_message=blocks[0],
        per_recipient=list(blocks[1:]),
        raw_parts=_split_parts(content, msg),
    )


def _split_parts(content: bytes, msg: Message) -> list[bytes]:
    boundary = msg.get_boundary()
    assert boundary, msg["Content-Type"]
    delimiter = b"\r\n--" + boundary.encode("ascii")
    body = b"\r\n" + content.split(b"\r\n\r\n", 1)[1]
    pieces = body.split(delimiter)
    # pieces: preamble, part 1, ..., part n, "--" epilogue
    assert pieces[-1].startswith(b"--"), "no closing delimiter"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n"), piece[:40]
        parts.append(piece[2:])
    return parts


def date(value: str) -> datetime:
    parsed = parsedate_to_datetime(value)
    assert parsed.tzinfo is not None, value
    return parsed


def header_section(data: bytes) -> bytes:
    """The header fields of a message, each with its CRLF, without the blank line."""
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
