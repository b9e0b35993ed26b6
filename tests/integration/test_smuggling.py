"""SMTP smuggling and injection: only <CRLF>.<CRLF> ends DATA; CR, LF and NUL in commands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from smtprelay import replies
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.inbound_support import (
    RECIPIENT,
    SENDER,
    RawClient,
    assert_crlf_only,
    assert_log,
    assert_reply,
    client_context,
    log_mark,
    qid_of,
    split_received,
    start_relay,
    wait_for_log,
)
from tests.integration.sinks import Sink
from tests.integration.sinks import free_port as sink_free_port


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    daemon = start_relay(tmp_path_factory, ca)
    yield daemon
    daemon.kill()


SMUGGLED = (
    b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\n"
    b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\npay now\r\n"
)

# Fake end-of-data sequences seen in the wild (SMTP smuggling, 2023), and relatives.
FAKE_ENDS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\r", b"\r.\r\n", b"\r\n.\n", b"\n.\r"]


def open_transaction(raw: RawClient) -> None:
    raw.ehlo()
    assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
    assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)
    assert raw.cmd("DATA").startswith("354 ")


@pytest.mark.parametrize("pieces", [False, True], ids=["one-write", "byte-by-byte"])
@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=[repr(f)[2:-1] for f in FAKE_ENDS])
def test_fake_end_of_data_does_not_split_the_message(
    relay: Daemon, fake_end: bytes, pieces: bool
) -> None:
    before = set(relay.queued_ids())
    head = b"From: app@example.com\r\nSubject: innocent\r\n\r\nfirst line"
    tail = SMUGGLED + b"\r\n.\r\n"
    with RawClient(relay.port) as raw:
        open_transaction(raw)
        if pieces:
            raw.send(head)
            for byte in fake_end:  # the fake terminator arrives cut in every place
                time.sleep(0.01)
                raw.send(bytes([byte]))
            time.sleep(0.01)
            raw.send(tail)
        else:
            raw.send(head + fake_end + tail)
        reply = raw.reply()
        assert len(reply) == 1, reply
        qid = qid_of(reply[0])
        # nothing else was answered: the next reply is the one to our QUIT
        assert raw.cmd("QUIT").startswith("221 ")
    after = set(relay.queued_ids())
    assert after - before == {qid}, "exactly one message must be queued"
    envelope = relay.envelope(qid)
    assert envelope["sender"] == SENDER
    assert [r["address"] for r in envelope["recipients"]] == [RECIPIENT]
    eml = relay.message(qid)
    assert_crlf_only(eml)
    _, content = split_received(eml)
    assert content.startswith(b"Date: ")
    assert f"\r\nMessage-ID: <{qid}@relay.test>\r\n".encode() + head in content
    assert b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\n" in content
    assert content.endswith(b"\r\npay now\r\n\r\n")
    # the smuggled text stays in the body, after the real header/body separator
    assert content.index(b"MAIL FROM:<evil@x>") > content.index(b"\r\n\r\n")


def test_pipelined_commands_after_data_are_not_a_second_message(relay: Daemon) -> None:
    """A real <CRLF>.<CRLF> followed by pipelined commands: two honest transactions."""
    before = set(relay.queued_ids())
    with RawClient(relay.port) as raw:
        open_transaction(raw)
        raw.send(
            b"Subject: one\r\n\r\nbody\r\n.\r\n"
            b"MAIL FROM:<app@example.com>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n"
        )
        first = qid_of(raw.reply()[0])
        assert_reply(raw.reply()[0], replies.SENDER_OK)
        assert_reply(raw.reply()[0], replies.RECIPIENT_OK)
        assert raw.reply()[0].startswith("354 ")
        second = qid_of(raw.cmd(b"Subject: two\r\n\r\nbody\r\n."))
    assert set(relay.queued_ids()) - before == {first, second}
    assert relay.envelope(second)["recipients"][0]["address"] == "carol@example.org"


def test_bare_lf_message_is_normalised_and_logged(relay: Daemon) -> None:
    mark = log_mark(relay)
    with RawClient(relay.port) as raw:
        open_transaction(raw)
        raw.send(b"Subject: unix\nFrom: app@example.com\n\nline one\nline two\n\r\n.\r\n")
        qid = qid_of(raw.reply()[0])
    eml = relay.message(qid)
    assert_crlf_only(eml)
    assert eml.endswith(
        b"Subject: unix\r\nFrom: app@example.com\r\n\r\nline one\r\nline two\r\n\r\n"
    )
    # the header block was recognised after normalisation: no second Date/Message-ID mix-up
    assert eml.count(b"\r\nMessage-ID: ") == 1
    assert relay.envelope(qid)["size"] == len(eml)
    wait_for_log(
        relay,
        rf"{qid}: warning: 5 bare CR or LF line ending\(s\) from "
        r"unknown\[127\.0\.0\.1\] normalized to CRLF",
        start=mark,
    )


def test_bare_cr_message_is_normalised(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        open_transaction(raw)
        raw.send(b"Subject: old mac\r\rline one\rline two\r\n.\r\n")
        qid = qid_of(raw.reply()[0])
    eml = relay.message(qid)
    assert_crlf_only(eml)
    assert eml.endswith(b"Subject: old mac\r\n\r\nline one\r\nline two\r\n")


def test_crlf_message_is_not_reported(relay: Daemon) -> None:
    mark = log_mark(relay)
    with RawClient(relay.port) as raw:
        open_transaction(raw)
        qid = qid_of(raw.cmd(b"Subject: proper\r\n\r\nline\r\n."))
    wait_for_log(relay, rf"{qid}: from=<{SENDER}>", start=mark)
    assert "bare CR or LF" not in relay.log()[mark:]


@pytest.mark.parametrize("bad", [b"\r", b"\x00"], ids=["CR", "NUL"])
def test_cr_or_nul_in_command_arguments(relay: Daemon, bad: bytes) -> None:
    with RawClient(relay.port) as raw:
        assert_reply(raw.cmd(b"EHLO client" + bad + b".test"), replies.BAD_HELO)
        assert_reply(raw.cmd(b"HELO client" + bad + b".test"), replies.BAD_HELO)
        raw.ehlo()
        assert_reply(raw.cmd(b"MAIL FROM:<app" + bad + b"@example.com>"), replies.BAD_SENDER_SYNTAX)
        assert_reply(raw.cmd(b"MAIL FROM:<app@example.com" + bad + b">"), replies.BAD_SENDER_SYNTAX)
        assert_reply(
            raw.cmd(b"MAIL FROM:<app@example.com> BODY=8BITMIME" + bad + b"X"),
            replies.BAD_SENDER_SYNTAX,
        )
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(
            raw.cmd(b"RCPT TO:<bob" + bad + b"@example.net>"), replies.BAD_RECIPIENT_SYNTAX
        )
        assert_reply(
            raw.cmd(b"RCPT TO:<bob@example.net>" + bad + b"RCPT TO:<x@y.example>"),
            replies.BAD_RECIPIENT_SYNTAX,
        )
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)


def test_starttls_command_injection_is_discarded(relay: Daemon) -> None:
    """Commands pipelined after STARTTLS in clear must not run inside TLS (CVE-2011-0411)."""
    with RawClient(relay.port) as raw:
        raw.ehlo()
        raw.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
        ready = raw.reply()[-1]
        assert ready.startswith("220 ")
        raw.sock = client_context(relay).wrap_socket(raw.sock, server_hostname="127.0.0.1")
        # If the injected MAIL had been executed, its 250 would come before the EHLO reply
        # and a MAIL now would be "nested".
        ehlo = raw.ehlo()
        assert ehlo[0].startswith("250-"), ehlo
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)


def test_nul_in_data_never_reaches_the_next_hop(tmp_path: Path, ca: trustme.CA) -> None:
    """``<CRLF><NUL>.<CRLF>`` would end the data at a next hop that strips NUL, and what
    follows would be a second message there. A message holding NUL is refused (554 5.6.0),
    nothing of it is queued, and the session goes on: the sink gets only the clean one."""
    port = sink_free_port([LOOPBACK])
    with Sink(LOOPBACK, port) as sink:
        relay = Daemon(
            tmp_path / "relay",
            ca,
            overrides={
                "delivery.smarthost": {"hosts": [f"{LOOPBACK}:{port}"], "tls": "none"},
            },
        ).start()
        try:
            mark = log_mark(relay)
            with RawClient(relay.port) as raw:
                open_transaction(raw)
                raw.send(b"Subject: nul\r\n\r\nfirst\r\n\x00.\r\n" + SMUGGLED + b"\r\n.\r\n")
                assert raw.reply() == [str(replies.NUL_IN_DATA)]
                assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
                assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)
                assert raw.cmd("DATA").startswith("354 ")
                qid = qid_of(raw.cmd(b"Subject: clean\r\n\r\nbody\r\n."))
            wait_for_log(relay, rf"{qid}: removed", start=mark, timeout=15)
            assert_log(
                relay,
                r": reject: END-OF-MESSAGE from unknown\[127\.0\.0\.1\]: "
                r"554 5\.6\.0 ",
                start=mark,
            )
        finally:
            relay.kill()
    (received,) = sink.messages
    assert received.mail_from == SENDER and received.rcpt_tos == (RECIPIENT,)
    assert b"\0" not in received.content and b"smuggled" not in received.content
    assert received.body().endswith(b"\r\nSubject: clean\r\n\r\nbody\r\n")
