"""Bounces over a message's life: delay warnings, expiry, notices that fail themselves,
mail from the null sender, and 8-bit / SMTPUTF8 originals carried in the DSN.

Same set-up as test_bounces.py (fixtures in bounce_fixtures.py): "dest.test" is a
scripted sink on MX1, the sender's mailbox "sender.test" a sink on MX2, the operator's
"admin.test" a sink on MX3. Lifetimes are seconds, so nothing waits for hours.
"""

from __future__ import annotations

from collections.abc import Callable
from email.message import Message

import pytest
from flufl.bounce import all_failures, scan_message

from tests.integration.bounce_support import (
    DELAY_WORDS,
    FAILURE_WORDS,
    POSTMASTER,
    POSTMASTER_WORDS,
    SENDER,
    assert_clean_log,
    date,
    header_section,
    notice_links,
    notices_at,
    read_report,
    submit,
    wait_notices,
    wait_queue_empty,
)
from tests.integration.daemon import Daemon
from tests.integration.delivery_support import deliveries, wait_removed
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures", "tests.integration.bounce_fixtures"]

RelayFactory = Callable[..., Daemon]


def message(tag: str, *, sender: str = SENDER) -> bytes:
    return (
        f"From: <{sender}>\r\n"
        f"To: <undisclosed-recipients>\r\n"
        f"Subject: lifecycle test {tag}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <{tag}@sender.test>\r\n"
        f"\r\n"
        f"Body of {tag}.\r\n"
    ).encode()


def test_expiry_produces_one_dsn_for_the_message(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """Two recipients deferred until max_queue_lifetime: one DSN for both, Status 4.4.7,
    the last remote reply as Diagnostic-Code and the server that gave it as Remote-MTA."""
    a, b = "a@dest.test", "b@dest.test"
    reply = "451 4.3.0 Temporary local problem"
    dest.rcpt_reply(a, reply)
    dest.rcpt_reply(b, reply)
    relay = delivering_relay(delivery={"retry_schedule": ["1s"], "max_queue_lifetime": "3s"})
    data = message("expiry")
    qid = submit(relay, [a, b], data)
    wait_removed(relay, qid, timeout=20)
    wait_queue_empty(relay)
    assert dest.rcpt_attempts[a] >= 2

    (notice,) = notices_at(mailbox)
    report = read_report(notice.content)
    assert report.msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert report.final_recipients() == [a, b]
    arrival = date(report.per_message["Arrival-Date"])
    for address in (a, b):
        block = report.recipient(address)
        assert block["Action"] == "failed"
        assert block["Status"] == "4.4.7"
        assert block["Diagnostic-Code"] == f"smtp; {reply}"
        # RFC 3464 2.3.5: MUST be given for recipients attempted over SMTP.
        assert block["Remote-MTA"] == "dns; mx1.dest.test", str(block)
        last = date(block["Last-Attempt-Date"])
        assert 2.5 <= (last - arrival).total_seconds() <= 10
    assert report.returned.get_content_type() == "message/rfc822"
    assert report.returned_body().endswith(data)
    assert scan_message(report.msg) == {a.encode(), b.encode()}
    assert [words for _, words, _ in notice_links(relay, qid)] == [FAILURE_WORDS]
    assert_clean_log(relay)


@pytest.mark.slow
def test_delay_notice_arrives_once_then_the_failure(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """[bounce] delay_warning = 2s with retries every second: exactly one delay notice
    (headers only, Will-Retry-Until), however many retries follow; at expiry the
    failure DSN. The delay notice is no bounce for a bounce processor."""
    slow = "slow@dest.test"
    reply = "450 4.2.0 Greylisted, try later"
    dest.rcpt_reply(slow, reply)
    relay = delivering_relay(
        delivery={"retry_schedule": ["1s"], "max_queue_lifetime": "6s"},
        bounce={"delay_warning": "2s"},
    )
    data = message("delay")
    qid = submit(relay, [slow], data)

    (warning,) = wait_notices(mailbox, 1, relay)
    report = read_report(warning.content)
    assert report.msg["Subject"] == "Delayed Mail (still being retried)"
    block = report.recipient(slow)
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.2.0"
    assert block["Diagnostic-Code"] == f"smtp; {reply}"
    assert block["Remote-MTA"] == "dns; mx1.dest.test", str(block)
    arrival = date(report.per_message["Arrival-Date"])
    until = date(block["Will-Retry-Until"])
    assert abs((until - arrival).total_seconds() - 6) <= 1.5, (arrival, until)
    assert report.returned.get_content_type() == "text/rfc822-headers"
    assert report.returned_body().endswith(header_section(data))
    assert "still trying" in report.text_body()
    assert scan_message(report.msg) == frozenset()
    temporary, permanent = all_failures(report.msg)
    assert (temporary, permanent) == (frozenset({slow.encode()}), frozenset())

    wait_removed(relay, qid, timeout=20)
    wait_queue_empty(relay)
    assert dest.rcpt_attempts[slow] >= 4, "retried after the warning"
    first, final = notices_at(mailbox)
    assert first == warning
    failed = read_report(final.content)
    assert failed.recipient(slow)["Action"] == "failed"
    assert scan_message(failed.msg) == {slow.encode()}
    assert [words for _, words, _ in notice_links(relay, qid)] == [DELAY_WORDS, FAILURE_WORDS]
    assert_clean_log(relay)


def test_failing_dsn_goes_to_postmaster_once_and_does_not_loop(
    dest: Sink,
    mailbox: Sink,
    admin: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """The sender's server refuses the DSN: the postmaster gets one report about it
    (which returns the failed DSN), nothing is sent back to the null sender, and the
    queue empties."""
    bad = "bad@dest.test"
    dest.rcpt_reply(bad, "550 5.1.1 No such user")
    mailbox.rcpt_reply(SENDER, "550 5.1.1 <app@sender.test>: no such mailbox")
    relay = delivering_relay(bounce={"postmaster": POSTMASTER})
    qid = submit(relay, [bad], message("loop"))
    wait_removed(relay, qid)
    # A notice is spooled before the message it is about is removed: a loop would keep
    # the queue from ever emptying, so once it is empty nothing more can come.
    wait_queue_empty(relay)

    assert notices_at(mailbox) == []
    assert mailbox.rcpt_attempts[SENDER.lower()] == 1
    (report_msg,) = notices_at(admin)
    assert report_msg.rcpt_tos == (POSTMASTER,)
    assert relay.queued_ids() == []

    ((_, words, nqid),) = notice_links(relay, qid)
    assert words == FAILURE_WORDS
    ((_, words, pqid),) = notice_links(relay, nqid)
    assert words == POSTMASTER_WORDS
    assert notice_links(relay, pqid) == []
    assert len(notice_links(relay)) == 2
    assert [d.status for d in deliveries(relay, nqid, SENDER)] == ["bounced"]
    assert [d.status for d in deliveries(relay, pqid, POSTMASTER)] == ["sent"]

    report = read_report(report_msg.content)
    assert report.msg["To"] == POSTMASTER
    block = report.recipient(SENDER)
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
    assert block["Remote-MTA"] == "dns; mx.sender.test"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <app@sender.test>: no such mailbox"
    # flufl.bounce walks every part, so it also reads the returned DSN about bad@.
    assert scan_message(report.msg) == {SENDER.encode(), bad.encode()}
    # The returned message is the DSN that failed, intact: itself a DSN about bad@.
    assert report.returned.get_content_type() == "message/rfc822"
    inner = read_report(report.returned_body())
    assert inner.msg["To"] == SENDER
    assert inner.final_recipients() == [bad]
    assert_clean_log(relay)


def test_failing_postmaster_report_is_only_logged(
    dest: Sink,
    mailbox: Sink,
    admin: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """The sender's server and the postmaster's both refuse: the report to the
    postmaster is tried once, then logged as discarded; no third notice, empty queue."""
    bad = "bad@dest.test"
    dest.rcpt_reply(bad, "550 5.1.1 No such user")
    mailbox.rcpt_reply(SENDER, "550 5.1.1 no such mailbox")
    admin.rcpt_reply(POSTMASTER, "550 5.1.1 no postmaster here")
    relay = delivering_relay(bounce={"postmaster": POSTMASTER})
    qid = submit(relay, [bad], message("loop2"))
    wait_removed(relay, qid)
    wait_queue_empty(relay)
    wait_until(lambda: "discarded" in relay.log(), 10, relay.log)

    assert notices_at(mailbox) == [] and notices_at(admin) == []
    assert mailbox.rcpt_attempts[SENDER.lower()] == 1
    assert admin.rcpt_attempts[POSTMASTER.lower()] == 1
    links = notice_links(relay)
    assert [words for _, words, _ in links] == [FAILURE_WORDS, POSTMASTER_WORDS]
    pqid = links[1][2]
    assert f"{pqid}: undeliverable notice to=<{POSTMASTER}> discarded" in relay.log()
    assert relay.queued_ids() == []
    assert_clean_log(relay)


def test_null_sender_message_that_fails_produces_nothing(
    dest: Sink,
    mailbox: Sink,
    admin: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """A message from <> (a notice from elsewhere) that fails is never bounced: with no
    [bounce] postmaster it is only logged."""
    bad = "bad@dest.test"
    dest.rcpt_reply(bad, "550 5.1.1 No such user")
    relay = delivering_relay()
    qid = submit(relay, [bad], message("null", sender=""), sender="")
    wait_removed(relay, qid)
    wait_queue_empty(relay)
    assert notices_at(mailbox) == [] and notices_at(admin) == []
    assert dest.messages == []
    assert notice_links(relay) == []
    assert [d.status for d in deliveries(relay, qid, bad)] == ["bounced"]
    assert f"{qid}: undeliverable notice to=<{bad}> discarded" in relay.log()
    assert_clean_log(relay)


def test_eight_bit_original_is_returned_exactly(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """An 8BITMIME message (Latin-1 and UTF-8 bodies) comes back byte for byte, in an
    8bit part of an 8bit DSN; bounce processors still read it."""
    bad = "bad@dest.test"
    dest.rcpt_reply(bad, "550 5.1.1 No such user")
    relay = delivering_relay()
    data = (
        b"From: <app@sender.test>\r\n"
        b"Subject: 8bit\r\n"
        b"Message-ID: <eightbit@sender.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"Caf\xe9 cr\xe8me br\xfbl\xe9e \xa4\r\n"
        b"and UTF-8 too: Gr\xc3\xbc\xc3\x9fe \xe2\x82\xac\r\n"
        b"\r\n"
        b"last line\r\n"
    )
    qid = submit(relay, [bad], data, mail_options=["BODY=8BITMIME"])
    wait_removed(relay, qid)
    wait_queue_empty(relay)
    (notice,) = notices_at(mailbox)
    report = read_report(notice.content)
    assert report.msg["Content-Transfer-Encoding"] == "8bit"
    assert report.returned.get_content_type() in ("message/rfc822", "message/global")
    assert report.returned["Content-Transfer-Encoding"] == "8bit"
    returned = report.returned_body()
    assert returned.startswith(b"Received: ") and returned.endswith(data)
    inner = report.returned.get_payload(0)
    assert isinstance(inner, Message)
    assert inner["Message-ID"] == "<eightbit@sender.test>"
    # The human part and the status part stay plain ASCII.
    assert report.raw_parts[0].isascii() and report.raw_parts[1].isascii()
    assert scan_message(report.msg) == {bad.encode()}
    assert_clean_log(relay)


def test_smtputf8_original_and_recipient(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """SMTPUTF8 mail from a UTF-8 sender: the DSN is delivered to that address (with
    SMTPUTF8), returns the message with its UTF-8 header as message/global, and a UTF-8
    recipient is reported in message/global-delivery-status as "utf-8; ..." (RFC 6533)."""
    sender = "jörg@sender.test"
    ascii_rcpt, utf8_rcpt = "bad@dest.test", "bäd@dest.test"
    dest.rcpt_reply(ascii_rcpt, "550 5.1.1 No such user")
    dest.rcpt_reply(utf8_rcpt, "550 5.1.1 Unbekannter Empfänger")
    relay = delivering_relay()
    data = (
        "From: Jörg <jörg@sender.test>\r\n"
        "Subject: Grüße aus Köln\r\n"
        "Message-ID: <utf8@sender.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Schöne Grüße, 東京\r\n"
    ).encode()
    options = ["SMTPUTF8", "BODY=8BITMIME"]
    first = submit(relay, [ascii_rcpt], data, sender=sender, mail_options=options)
    second = submit(relay, [utf8_rcpt], data, sender=sender, mail_options=options)
    wait_removed(relay, first)
    wait_removed(relay, second)
    wait_queue_empty(relay)
    notices = notices_at(mailbox)
    assert len(notices) == 2, relay.log()
    for notice in notices:
        assert notice.rcpt_tos == (sender,)
        assert "To: jörg@sender.test\r\n".encode() in notice.content

    (to_ascii,) = [n for n in notices if b"report-type=delivery-status" in n.content]
    report = read_report(to_ascii.content)
    assert report.final_recipients() == [ascii_rcpt]
    assert report.returned.get_content_type() == "message/global"
    assert report.returned["Content-Transfer-Encoding"] == "8bit"
    assert report.returned_body().endswith(data)
    assert scan_message(report.msg) == {ascii_rcpt.encode()}

    (to_utf8,) = [n for n in notices if n is not to_ascii]
    report = read_report(to_utf8.content, "message/global-delivery-status")
    (block,) = report.per_recipient
    assert block["Final-Recipient"] == f"utf-8; {utf8_rcpt}"
    assert block["Action"] == "failed"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 Unbekannter Empfänger"
    assert report.returned_body().endswith(data)
    assert_clean_log(relay)
