"""Bounces and delivery status notifications (RFC 3461/3464), end to end.

DSNs are built by the real daemon from real failures: the receiving server for
"dest.test" and "other.test" (a scripted sink on MX1) refuses or defers recipients, and
the notices are delivered, through the same pipeline as any mail, to the sender's
mailbox (a sink on MX2 for "sender.test"). Each DSN is then read as the sender's
software would: parsed with the ``email`` package, checked field by field, and fed to
``flufl.bounce``, which must find exactly the failed recipients.

This file: the DSN for permanent failures (structure, fields, RET, ORCPT, ENVID, one
DSN per message and event), NOTIFY, and the [bounce] settings. Delay warnings, expiry,
loops and 8-bit / SMTPUTF8 originals are in test_bounces_lifecycle.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from email.message import Message

import pytest
from flufl.bounce import scan_message

from tests.integration.bounce_support import (
    ADMIN,
    FAILURE_WORDS,
    POSTMASTER,
    SENDER,
    SUCCESS_WORDS,
    assert_clean_log,
    date,
    header_section,
    message,
    notice_links,
    notices_at,
    read_report,
    submit,
    wait_notices,
    wait_queue_empty,
)
from tests.integration.daemon import Daemon
from tests.integration.delivery_support import (
    deliveries,
    wait_removed,
    wait_status,
)
from tests.integration.sinks import Sink

pytest_plugins = ["tests.integration.delivery_fixtures", "tests.integration.bounce_fixtures"]

RelayFactory = Callable[..., Daemon]
DEFAULT_FROM = "Mail Delivery System <MAILER-DAEMON@relay.test>"


def test_failure_dsn_structure_fields_and_flufl(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """One message, four recipients on two destinations: one accepted, three refused by
    the remote servers in the same attempt. One DSN covers the three, with every field
    of RFC 3464 a bounce processor reads, and returns the whole message."""
    ok, bad1, bad2, bad3 = "ok@dest.test", "bad1@dest.test", "bad2@dest.test", "bad3@other.test"
    replies = {
        bad1: "550 5.1.1 <bad1@dest.test>: Recipient address rejected: User unknown",
        bad2: "552 5.2.2 Mailbox full",
        bad3: "553 5.7.1 Relaying denied for this recipient",
    }
    for address, reply in replies.items():
        dest.rcpt_reply(address, reply)
    relay = delivering_relay()
    data = message("structure")
    before = time.time()
    qid = submit(
        relay,
        {ok: [], bad1: ["ORCPT=rfc822;bad1@dest.test"], bad2: [], bad3: []},
        data,
        mail_options=["ENVID=structure-envid"],
    )
    after = time.time()

    wait_removed(relay, qid)
    wait_queue_empty(relay)
    (notice,) = notices_at(mailbox)  # one DSN for the message, never one per recipient
    assert notice.rcpt_tos == (SENDER,)
    assert [m for m in mailbox.messages if m is not notice] == []

    report = read_report(notice.content)
    msg = report.msg
    assert msg["From"] == DEFAULT_FROM
    assert msg["To"] == SENDER
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert abs(date(msg["Date"]).timestamp() - time.time()) < 30

    fields = report.per_message
    assert fields["Reporting-MTA"] == "dns; relay.test"
    assert fields["Original-Envelope-Id"] == "structure-envid"
    arrival = date(fields["Arrival-Date"]).timestamp()
    assert before - 1 <= arrival <= after + 1, (before, fields["Arrival-Date"], after)

    assert report.final_recipients() == sorted([bad1, bad2, bad3]), "the delivered one is not"
    remote = {bad1: "mx1.dest.test", bad2: "mx1.dest.test", bad3: "mx.other.test"}
    for address, reply in replies.items():
        block = report.recipient(address)
        assert block["Final-Recipient"] == f"rfc822; {address}"
        assert block["Action"] == "failed"
        assert block["Status"] == reply.split()[1]
        assert block["Remote-MTA"] == f"dns; {remote[address]}"
        assert block["Diagnostic-Code"] == f"smtp; {reply}"
        last = date(block["Last-Attempt-Date"]).timestamp()
        assert arrival <= last + 1 and last <= time.time() + 1
        assert "Will-Retry-Until" not in block
    assert report.recipient(bad1)["Original-Recipient"] == "rfc822;bad1@dest.test"
    assert report.recipient(bad2)["Original-Recipient"] is None, "no ORCPT given"

    text = report.text_body()
    for address, reply in replies.items():
        assert f"<{address}>" in text
        assert reply in text, text  # the remote reply, for a human to read
    assert "mx1.dest.test" in text and "mx.other.test" in text
    assert ok not in text

    # No RET: a failure returns the whole message, exactly as it was queued.
    assert report.returned.get_content_type() == "message/rfc822"
    returned = report.returned_body()
    assert returned.startswith(b"Received: ") and returned.endswith(data)
    inner = report.returned.get_payload(0)
    assert isinstance(inner, Message)
    assert inner["Message-ID"] == "<structure@sender.test>"
    assert inner["Subject"] == "bounce test structure"

    assert scan_message(msg) == {address.encode() for address in replies}

    # The log links the message to its notice, and the notice is delivered like any mail.
    ((_, words, nqid),) = notice_links(relay, qid)
    assert words == FAILURE_WORDS
    log = relay.log()
    assert f"{qid}: {FAILURE_WORDS}: {nqid}" in log
    assert f"{nqid}: from=<>, size={len(notice.content)}, nrcpt=1 (queue active)" in log
    (sent,) = deliveries(relay, nqid, SENDER)
    assert sent.status == "sent"
    assert sent.relay.startswith("mx.sender.test[127.0.0.3]")
    assert f"{nqid}: removed" in log
    assert_clean_log(relay)

    # The DSN names the queue ID of the message it is about, so that the sender can
    # quote it and the operator find it in the log (as Postfix's X-Postfix-Queue-ID).
    assert f"Its queue ID at relay.test is {qid}." in text, text
    assert fields["X-Smtprelay-Queue-ID"] == qid, (qid, nqid)


def test_recipients_failing_at_different_attempts(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """A recipient refused at once and another refused only at a later attempt: one DSN
    per event, each about the recipients that failed then (none repeated)."""
    first, later = "first@dest.test", "later@dest.test"
    dest.rcpt_reply(first, "550 5.1.1 No such user")
    dest.rcpt_reply(later, "450 4.2.1 Mailbox busy")
    relay = delivering_relay(delivery={"retry_schedule": ["1s"]})
    qid = submit(relay, [first, later], message("two-events"))

    wait_status(relay, qid, later, "deferred")
    (notice,) = wait_notices(mailbox, 1, relay)
    report = read_report(notice.content)
    assert report.final_recipients() == [first]
    assert scan_message(report.msg) == {first.encode()}

    dest.rcpt_reply(later, "550 5.2.1 Mailbox disabled")
    wait_removed(relay, qid)
    wait_queue_empty(relay)
    first_notice, second_notice = notices_at(mailbox)
    assert first_notice == notice
    second = read_report(second_notice.content)
    assert second.final_recipients() == [later]
    block = second.recipient(later)
    assert (block["Action"], block["Status"]) == ("failed", "5.2.1")
    assert block["Diagnostic-Code"] == "smtp; 550 5.2.1 Mailbox disabled"
    assert scan_message(second.msg) == {later.encode()}
    assert [words for _, words, _ in notice_links(relay, qid)] == [FAILURE_WORDS] * 2
    assert_clean_log(relay)


@pytest.mark.parametrize("ret", ["FULL", "HDRS"])
def test_ret_and_orcpt(
    ret: str,
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """RET=FULL returns the message, RET=HDRS its header section as text/rfc822-headers.
    ORCPT is reported as Original-Recipient, xtext-decoded; a bounce processor keys on
    it, as a mailing list knows the subscriber by the address it sent to."""
    plus, alias = "bob+tag@dest.test", "carol@dest.test"
    dest.rcpt_reply(plus, "550 5.1.1 No such user")
    dest.rcpt_reply(alias, "550 5.1.1 No such user")
    relay = delivering_relay()
    data = message(f"ret-{ret}", body="A body line that must not come back with HDRS.\r\n")
    qid = submit(
        relay,
        {
            plus: ["ORCPT=rfc822;bob+2Btag@dest.test"],
            alias: ["ORCPT=rfc822;list-member@sender.test"],
        },
        data,
        mail_options=[f"RET={ret}"],
    )
    wait_removed(relay, qid)
    wait_queue_empty(relay)
    (notice,) = notices_at(mailbox)
    report = read_report(notice.content)

    assert report.recipient(plus)["Original-Recipient"] == "rfc822;bob+tag@dest.test"
    assert report.recipient(alias)["Original-Recipient"] == "rfc822;list-member@sender.test"
    assert "<list-member@sender.test>" in report.text_body()
    assert scan_message(report.msg) == {b"bob+tag@dest.test", b"list-member@sender.test"}

    returned = report.returned_body()
    if ret == "FULL":
        assert report.returned.get_content_type() == "message/rfc822"
        assert returned.endswith(data)
        assert "original message is attached" in report.text_body()
    else:
        assert report.returned.get_content_type() == "text/rfc822-headers"
        assert returned.startswith(b"Received: ")
        assert returned.endswith(header_section(data))
        assert b"\r\n\r\n" not in returned and b"A body line" not in returned
        assert "header of the original message is attached" in report.text_body()
    assert_clean_log(relay)


def test_oversized_original_is_returned_as_headers(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """Above [bounce] max_return_size only the header section comes back, and the
    text says why."""
    bad = "big@dest.test"
    dest.rcpt_reply(bad, "550 5.1.1 No such user")
    relay = delivering_relay(bounce={"max_return_size": 2000})
    data = message("big", body=("y" * 70 + "\r\n") * 100)
    qid = submit(relay, [bad], data)
    wait_removed(relay, qid)
    wait_queue_empty(relay)
    (notice,) = notices_at(mailbox)
    report = read_report(notice.content)
    assert report.returned.get_content_type() == "text/rfc822-headers"
    assert report.returned_body().endswith(header_section(data))
    assert "2000" in report.text_body()
    assert scan_message(report.msg) == {bad.encode()}


def test_notify_never_sends_nothing(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """NOTIFY=NEVER: no DSN for that recipient; a recipient of the same message who did
    not say NEVER still gets reported, alone."""
    quiet, loud = "quiet@dest.test", "loud@dest.test"
    dest.rcpt_reply(quiet, "550 5.1.1 No such user")
    dest.rcpt_reply(loud, "550 5.1.1 No such user")
    relay = delivering_relay()
    never_only = submit(relay, {quiet: ["NOTIFY=NEVER"]}, message("never"))
    mixed = submit(relay, {quiet: ["NOTIFY=NEVER"], loud: []}, message("mixed"))
    wait_removed(relay, never_only)
    wait_removed(relay, mixed)
    wait_queue_empty(relay)
    assert notice_links(relay, never_only) == []
    assert [words for _, words, _ in notice_links(relay, mixed)] == [FAILURE_WORDS]
    (notice,) = notices_at(mailbox)
    report = read_report(notice.content)
    assert report.final_recipients() == [loud]
    assert "X-Tag: mixed" in report.returned_body().decode()
    assert scan_message(report.msg) == {loud.encode()}
    # Both failures are in the log all the same: accounted for, not reported.
    assert [d.status for d in deliveries(relay, never_only, quiet)] == ["bounced"]
    assert_clean_log(relay)


def test_notify_success_to_a_server_without_dsn_gives_relayed(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
    sink_port: int,
) -> None:
    """NOTIFY=SUCCESS to a next hop that does not speak DSN (aiosmtpd): the relay says
    so with Action: relayed (RFC 3461 section 4.2), headers only. NOTIFY=SUCCESS alone
    on a refused recipient asks for no failure report."""
    asked, silent, refused = "asked@dest.test", "silent@dest.test", "refused@dest.test"
    dest.rcpt_reply(refused, "550 5.1.1 No such user")
    relay = delivering_relay()
    data = message("success")
    qid = submit(
        relay,
        {
            asked: ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;asked@dest.test"],
            silent: [],
            refused: ["NOTIFY=SUCCESS"],
        },
        data,
    )
    wait_removed(relay, qid)
    wait_queue_empty(relay)
    assert len(dest.delivered_to(asked)) == 1

    (notice,) = notices_at(mailbox)
    report = read_report(notice.content)
    assert report.msg["Subject"] == "Successful Mail Delivery Report"
    assert report.final_recipients() == [asked]
    block = report.recipient(asked)
    assert block["Action"] == "relayed"
    assert block["Status"] == "2.0.0"
    assert block["Original-Recipient"] == "rfc822;asked@dest.test"
    assert block["Remote-MTA"] == "dns; mx1.dest.test"
    assert block["Diagnostic-Code"].startswith("smtp; 250 ")
    assert report.returned.get_content_type() == "text/rfc822-headers"
    assert report.returned_body().endswith(header_section(data))
    assert scan_message(report.msg) == frozenset(), "a success is no bounce"
    assert [words for _, words, _ in notice_links(relay, qid)] == [SUCCESS_WORDS]
    assert_clean_log(relay)


def test_notify_admin_gets_a_copy_of_failure_notices(
    dest: Sink,
    mailbox: Sink,
    admin: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """[bounce] notify_admin: the same failure notice goes to the admin too (success
    reports do not); [bounce] sender is the From: of notices."""
    bad, ok = "bad@dest.test", "ok@dest.test"
    dest.rcpt_reply(bad, "550 5.1.1 No such user")
    relay = delivering_relay(
        bounce={"notify_admin": ADMIN, "sender": "Relay Bounces <bounces@relay.test>"}
    )
    qid = submit(relay, {bad: [], ok: ["NOTIFY=SUCCESS"]}, message("admin-copy"))
    wait_removed(relay, qid)
    wait_queue_empty(relay)

    notices = notices_at(mailbox)
    assert len(notices) == 2
    (failure,) = [m for m in notices if b"\r\nAction: failed\r\n" in m.content]
    (success,) = [m for m in notices if b"\r\nAction: relayed\r\n" in m.content]
    (copy,) = notices_at(admin)
    assert copy.rcpt_tos == (ADMIN,)
    assert copy.content == failure.content, "the admin gets the sender's notice itself"
    report = read_report(copy.content)
    assert report.msg["To"] == SENDER
    assert report.msg["From"] == "Relay Bounces <bounces@relay.test>"
    assert report.final_recipients() == [bad]
    assert scan_message(report.msg) == {bad.encode()}
    assert read_report(success.content).recipient(ok)["Action"] == "relayed"
    links = notice_links(relay, qid)
    assert sorted(words for _, words, _ in links) == sorted([FAILURE_WORDS, SUCCESS_WORDS])
    (nqid,) = [n for _, words, n in links if words == FAILURE_WORDS]
    assert [d.to for d in deliveries(relay, nqid)] in ([SENDER, ADMIN], [ADMIN, SENDER])
    assert_clean_log(relay)


def test_bounce_disabled_sends_nothing(
    dest: Sink,
    mailbox: Sink,
    admin: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """[bounce] enabled = false: no notice of any kind, to anyone; the failure is still
    logged and the message removed."""
    bad, ok = "bad@dest.test", "ok@dest.test"
    dest.rcpt_reply(bad, "550 5.1.1 No such user")
    relay = delivering_relay(
        bounce={"enabled": False, "notify_admin": ADMIN, "postmaster": POSTMASTER}
    )
    qid = submit(relay, {bad: [], ok: ["NOTIFY=SUCCESS,FAILURE"]}, message("disabled"))
    null = submit(relay, [bad], message("disabled-null", sender=""), sender="")
    wait_removed(relay, qid)
    wait_removed(relay, null)
    wait_queue_empty(relay)  # notices are spooled before the message is removed
    assert notices_at(mailbox) == [] and notices_at(admin) == []
    assert notice_links(relay) == []
    assert [d.status for d in deliveries(relay, qid, bad)] == ["bounced"]
    assert [d.status for d in deliveries(relay, null, bad)] == ["bounced"]
    assert_clean_log(relay)


def test_arrival_date_is_the_queue_arrival(
    dest: Sink,
    mailbox: Sink,
    delivering_relay: RelayFactory,
) -> None:
    """Arrival-Date is when the relay accepted the message, Last-Attempt-Date when it
    gave up: with a retry in between, they differ by about the retry interval."""
    bad = "slow-fail@dest.test"
    dest.rcpt_reply(bad, "451 4.3.0 Try again")
    relay = delivering_relay(delivery={"retry_schedule": ["2s"]})
    qid = submit(relay, [bad], message("arrival"))
    wait_status(relay, qid, bad, "deferred")
    dest.rcpt_reply(bad, "550 5.1.1 No such user")
    wait_removed(relay, qid)
    wait_queue_empty(relay)
    (notice,) = notices_at(mailbox)
    report = read_report(notice.content)
    arrival = date(report.per_message["Arrival-Date"])
    last = date(report.recipient(bad)["Last-Attempt-Date"])
    assert timedelta(seconds=1) <= last - arrival <= timedelta(seconds=10), (arrival, last)
