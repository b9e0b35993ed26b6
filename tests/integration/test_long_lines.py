"""Long lines reach receivers that enforce RFC 5321's limit (issue 10, "Long lines").

Legacy applications send HTML as one line of thousands of octets. The relay folds every
line over ``[delivery] line_length_limit`` (998) on output; a strict aiosmtpd receiver
(aiosmtpd's default, which answers ``500 Line too long``) and a real Postfix next hop in front
of it get the message, every line on the wire is at most 998 octets, and the content
is the original once unfolded.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from typing import Any

import pytest

from tests.integration.daemon import Daemon, free_port
from tests.integration.delivery_support import statuses, submit, wait_status
from tests.integration.postfix_peer import PostfixPeer, unavailable
from tests.integration.sinks import Sink, _SinkSMTP
from tests.polling import wait_until
from tests.unfold import longest_line, unfolds_to

LIMIT = 998
SINK_HOST = "127.0.0.2"
RCPT = "bob@dest.test"

WORDS_HEADER = b"X-Long-Words: " + b" ".join(b"w%04d" % i for i in range(400))  # 2,413
TOKEN_HEADER = b"X-Long-Token:" + b"T" * 1_987  # 2,000 octets, no white space at all
LINE_2K = b"<p>" + b"x" * 1_997
LINE_10K = (b"<td>cell</td> " * 715)[:10_000]
LINE_100K = b"y" * 100_000
DOT_LINE = b"." + b"z" * 2_999  # stuffed on the wire; a fold keeps room for the dot

ORIGINAL = (
    b"From: <app@sender.test>\r\n"
    b"To: <bob@dest.test>\r\n"
    b"Subject: long lines\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <long-lines@sender.test>\r\n" + WORDS_HEADER + b"\r\n" + TOKEN_HEADER + b"\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=us-ascii\r\n"
    b"\r\n"
    b"<html><body>\r\n"
    + LINE_2K
    + b"\r\n"
    + LINE_10K
    + b"\r\n"
    + LINE_100K
    + b"\r\n"
    + DOT_LINE
    + b"\r\n"
    b".\r\n"  # a lone dot in the content: stuffed, never the end of DATA
    b"</body></html>\r\n"
)
assert (len(LINE_2K), len(LINE_10K), len(LINE_100K), len(TOKEN_HEADER)) == (
    2_000,
    10_000,
    100_000,
    2_000,
)
LONG_LINES = 6


class _RecordingSMTP(_SinkSMTP):
    # aiosmtpd's own limit, as in its default SMTP class: a line of more than 1,001 octets
    # with CRLF (998, CRLF and a stuffing dot) is refused with "500 Line too long".
    line_length_limit = 1001

    def data_received(self, data: bytes) -> None:
        assert isinstance(self.sink, StrictSink)
        self.sink.record(data)
        super().data_received(data)


class StrictSink(Sink):
    """A sink that refuses over-long lines as aiosmtpd does by default and keeps the exact
    bytes its clients sent (no TLS here, so they are what went over TCP)."""

    def __init__(self, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._wire = bytearray()

    def record(self, data: bytes) -> None:
        with self._lock:
            self._wire += data

    @property
    def wire(self) -> bytes:
        with self._lock:
            return bytes(self._wire)

    def _factory(self) -> _RecordingSMTP:
        return _RecordingSMTP(
            self,
            hostname=self.name,
            ident="sink",
            timeout=self.idle_timeout,
            data_size_limit=33_554_432,
        )


@pytest.fixture
def strict_sink() -> Iterator[StrictSink]:
    sink = StrictSink(SINK_HOST, free_port())
    sink.start()
    yield sink
    sink.stop()


def _relay_to(make_daemon: Callable[..., Daemon], hop: str, **delivery: Any) -> Daemon:
    return make_daemon(
        overrides={
            "delivery": {
                "mode": "smarthost",
                "retry_schedule": ["1s"],
                "connect_timeout": "5s",
                "command_timeout": "10s",
                "data_timeout": "10s",
                **delivery,
            },
            "delivery.smarthost": {"hosts": [hop], "tls": "none"},
            "bounce": {"enabled": False},
        }
    )


def _without_trace_headers(content: bytes) -> bytes:
    """The message as submitted: the Received: headers of the relays (each possibly
    folded over several lines) taken off the top."""
    lines = content.split(b"\r\n")
    i = 0
    while lines[i].startswith(b"Received: "):
        i += 1
        while lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\r\n".join(lines[i:])


def _assert_wire_lines_fit(wire: bytes) -> None:
    """Every line the client sent (commands and content) is at most 998 octets, not
    counting the dot added by dot-stuffing (RFC 5321 4.5.3.1.6) -- and a folded line
    starting with a dot fits even with it."""
    lengths = [len(line) - line.startswith(b"..") for line in wire.split(b"\r\n")]
    assert max(lengths) <= LIMIT, sorted(lengths)[-5:]
    assert lengths.count(LIMIT) >= 100  # pieces fill the limit (100,000 octets / 998)
    assert b"\r\n.." + DOT_LINE[1 : LIMIT - 1] + b"\r\n " in wire  # stuffed, 998 in all
    assert b"\r\n..\r\n" in wire  # the lone dot of the content, stuffed


def _assert_content_kept(received: bytes) -> None:
    content = _without_trace_headers(received)
    assert longest_line(content) <= LIMIT
    assert unfolds_to(content, ORIGINAL)
    # A mail reader unfolds the header folded at white space to exactly what was sent.
    message = BytesParser(policy=email.policy.default).parsebytes(content)
    assert message["X-Long-Words"] == WORDS_HEADER.split(b": ", 1)[1].decode()
    assert message["Message-ID"] == "<long-lines@sender.test>"
    assert message.get_content_type() == "text/html"


def test_long_lines_reach_a_receiver_that_refuses_them(
    make_daemon: Callable[..., Daemon], strict_sink: StrictSink
) -> None:
    relay = _relay_to(make_daemon, f"{SINK_HOST}:{strict_sink.port}")
    qid = submit(relay, [RCPT], ORIGINAL)
    wait_status(relay, qid, RCPT, "sent")
    [received] = strict_sink.messages
    _assert_wire_lines_fit(strict_sink.wire)
    _assert_content_kept(received.content)
    # One warning line for the message, keyed by its queue ID.
    folded = re.findall(
        rf"smtprelay/smtp\[\d+\]: {qid}: warning: folded (\d+) line\(s\) "
        rf"longer than 998 octets \(longest (\d+)\) for delivery$",
        relay.log(),
        re.MULTILINE,
    )
    assert folded == [(str(LONG_LINES), "100000")]


def test_without_folding_the_strict_receiver_refuses_the_message(
    make_daemon: Callable[..., Daemon], strict_sink: StrictSink
) -> None:
    """The same message with line_length_limit = 0: what the folding prevents; then the
    limit set again by a reload."""
    relay = _relay_to(make_daemon, f"{SINK_HOST}:{strict_sink.port}", line_length_limit=0)
    qid = submit(relay, [RCPT], ORIGINAL)
    [bounced] = wait_status(relay, qid, RCPT, "bounced")
    assert bounced.reply.startswith("500 ") and "Line too long" in bounced.reply
    assert strict_sink.messages == []
    assert "warning: folded" not in relay.log()
    # Turned on by a reload (SIGHUP), the next delivery folds.
    relay.reconfigure({"delivery": {"line_length_limit": LIMIT}})
    assert "configuration reloaded" in relay.hup()
    qid = submit(relay, [RCPT], ORIGINAL)
    wait_status(relay, qid, RCPT, "sent")
    _assert_content_kept(strict_sink.messages[0].content)


def test_lines_at_the_limit_are_sent_byte_for_byte(
    make_daemon: Callable[..., Daemon], strict_sink: StrictSink
) -> None:
    """998 octets, and 998 with a leading dot (999 on the wire: RFC 5321 does not count
    the stuffing dot): nothing folded, nothing logged."""
    headers = b"\r\n".join(ORIGINAL.split(b"\r\n")[:5])
    original = (
        headers
        + b"\r\n\r\n"
        + b"\r\n".join([b"a" * LIMIT, b"." + b"b" * (LIMIT - 1), b"c"])
        + b"\r\n"
    )
    relay = _relay_to(make_daemon, f"{SINK_HOST}:{strict_sink.port}")
    qid = submit(relay, [RCPT], original)
    wait_status(relay, qid, RCPT, "sent")
    assert _without_trace_headers(strict_sink.messages[0].content) == original
    assert statuses(relay, qid, RCPT) == ["sent"]
    assert "warning: folded" not in relay.log()


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_long_lines_through_a_postfix_next_hop(
    make_daemon: Callable[..., Daemon], strict_sink: StrictSink
) -> None:
    """relay -> Postfix -> strict receiver. Postfix is told not to fold itself
    (smtp_line_length_limit = 0), so the receiver sees the lines as the relay sent them:
    unfolded lines would be refused there and the message bounced by Postfix."""
    port = free_port()
    with PostfixPeer(
        port, f"[{SINK_HOST}]:{strict_sink.port}", smtp_line_length_limit="0"
    ) as postfix:
        relay = _relay_to(make_daemon, f"127.0.0.1:{port}")
        qid = submit(relay, [RCPT], ORIGINAL)
        wait_status(relay, qid, RCPT, "sent")
        wait_until(
            lambda: strict_sink.messages, 30, lambda: f"Postfix to the strict sink\n{postfix.log()}"
        )
        # Postfix logs the delivery just after the sink's 250: wait for the line.
        wait_until(
            lambda: re.search(
                rf"postfix/smtp\[\d+\]: \w+: to=<{RCPT}>, relay=.*status=sent", postfix.log()
            ),
            30,
            lambda: f"Postfix's delivery line\n{postfix.log()}",
        )
    [received] = strict_sink.messages
    assert received.content.count(b"Received: ") >= 2  # Postfix's and the relay's
    _assert_wire_lines_fit(strict_sink.wire)
    _assert_content_kept(received.content)
