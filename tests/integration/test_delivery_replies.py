"""What the relay does with the receiving server's answers: per-recipient results,
temporary failures and retries, expiry, failures at the final dot, and TLS policy.

Retries use a 1 s schedule (the test config), so nothing here sleeps for minutes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trustme

from tests.integration.daemon import Daemon
from tests.integration.delivery_support import (
    MX1,
    LogDelivery,
    assert_delivered_intact,
    deliveries,
    envelope_when,
    make_message,
    recipient_state,
    relay_of,
    statuses,
    submit,
    wait_removed,
    wait_status,
)
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

RelayFactory = Callable[..., Daemon]


@pytest.fixture
def dest(dns: TestDNSServer) -> str:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    return "dest.test"


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_partial_recipient_failure_in_one_transaction(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
    sink_port: int,
    pipelining: bool,
) -> None:
    """250 / 450 / 550 to three RCPTs of one transaction: sent, deferred, bounced;
    the deferred one alone is retried and delivered once the server takes it. The same
    when the server offers PIPELINING (RFC 2920: MAIL, the RCPTs and DATA in one write)."""
    ok, later, bad = "ok@dest.test", "later@dest.test", "bad@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test", pipelining=pipelining)
    sink.rcpt_reply(later, "450 4.2.1 Mailbox busy, try later")
    sink.rcpt_reply(bad, "550 5.1.1 No such user")
    relay = delivering_relay()
    data = make_message("partial")
    qid = submit(relay, [ok, later, bad], data)

    # The three lines are written one after another: wait for each (a read of the log
    # between two of them would miss the later ones).
    wait_status(relay, qid, later, "deferred")
    wait_status(relay, qid, ok, "sent")
    wait_status(relay, qid, bad, "bounced")
    mx1 = relay_of("mx1.dest.test", MX1, sink_port)
    (sent,) = deliveries(relay, qid, ok)
    assert (sent.status, sent.dsn, sent.relay) == ("sent", "2.0.0", mx1)
    (bounced,) = deliveries(relay, qid, bad)
    assert (bounced.status, bounced.dsn, bounced.relay) == ("bounced", "5.1.1", mx1)
    assert bounced.reply == "550 5.1.1 No such user"
    deferred = deliveries(relay, qid, later)[0]
    assert (deferred.status, deferred.dsn, deferred.relay) == ("deferred", "4.2.1", mx1)
    assert deferred.reply == "450 4.2.1 Mailbox busy, try later"
    # One transaction: the message went once, to the accepted recipient only.
    assert_delivered_intact(sink, qid, data, [ok])

    envelope = envelope_when(relay, qid, lambda e: e["state"] == "deferred")
    assert recipient_state(envelope, ok)["state"] == "delivered"
    assert recipient_state(envelope, bad)["state"] == "failed"
    assert recipient_state(envelope, bad)["last_reply"] == "550 5.1.1 No such user"
    pending = recipient_state(envelope, later)
    assert pending["state"] == "pending"
    assert pending["attempts"] >= 1
    assert pending["last_reply"] == "450 4.2.1 Mailbox busy, try later"
    assert envelope["next_attempt"] > envelope["arrival"]

    sink.rcpt_reply(later, None)  # the mailbox is free again
    wait_removed(relay, qid)
    assert statuses(relay, qid, later)[-1] == "sent"
    assert statuses(relay, qid, ok) == ["sent"], "a delivered recipient is never resent"
    assert statuses(relay, qid, bad) == ["bounced"]
    assert sink.rcpt_attempts[ok] == 1
    assert sink.rcpt_attempts[bad] == 1
    retried = [m for m in sink.messages if later in m.rcpt_tos]
    assert len(retried) == 1
    assert retried[0].rcpt_tos == (later,)
    assert retried[0].body() == data
    assert (sink.pipelined_batches > 0) is pipelining


def test_pipelined_transaction_with_every_recipient_refused(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
) -> None:
    """All RCPTs refused in a pipelined batch: the server refuses the DATA that came
    with them, nothing is sent, the recipients bounce, and the connection (reset) carries
    the next message."""
    sink = make_sink(MX1, name="mx1.dest.test", pipelining=True)
    sink.rcpt_reply("gone@dest.test", "550 5.1.1 No such user")
    sink.rcpt_reply("full@dest.test", "452 4.2.2 Mailbox full")
    relay = delivering_relay(delivery={"retry_schedule": ["1h"]})
    refused = submit(relay, ["gone@dest.test", "full@dest.test"], make_message("refused"))
    wait_status(relay, refused, "full@dest.test", "deferred")
    assert statuses(relay, refused, "gone@dest.test") == ["bounced"]
    data = make_message("next")
    following = submit(relay, ["ok@dest.test"], data)
    wait_status(relay, following, "ok@dest.test", "sent")
    assert_delivered_intact(sink, following, data, ["ok@dest.test"])
    assert len(sink.messages) == 1  # only the second message was ever sent
    assert sink.connections == 1
    assert sink.pipelined_batches == 2


def test_temporary_failure_then_success_on_retry(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
) -> None:
    rcpt = "grey@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test")
    sink.rcpt_reply(rcpt, "450 4.7.1 Greylisted, come back later", times=2)
    relay = delivering_relay()
    data = make_message("greylist")
    qid = submit(relay, [rcpt], data)
    wait_removed(relay, qid, timeout=20)
    lines = deliveries(relay, qid, rcpt)
    assert [d.status for d in lines] == ["deferred", "deferred", "sent"]
    assert [d.dsn for d in lines] == ["4.7.1", "4.7.1", "2.0.0"]
    # Retried on the short schedule, not at once: about 1 s between attempts.
    assert lines[1].delay - lines[0].delay >= 0.8
    assert lines[2].delay - lines[1].delay >= 0.8
    assert sink.rcpt_attempts[rcpt] == 3
    assert_delivered_intact(sink, qid, data, [rcpt])


def test_expiry_after_max_queue_lifetime(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
) -> None:
    rcpt = "forever@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test")
    sink.rcpt_reply(rcpt, "451 4.3.0 Temporary local problem")
    relay = delivering_relay(delivery={"max_queue_lifetime": "3s"})
    qid = submit(relay, [rcpt], make_message("expiry"))
    wait_removed(relay, qid, timeout=20)
    lines = deliveries(relay, qid, rcpt)
    *tries, last = lines
    assert len(tries) >= 2
    assert {d.status for d in tries} == {"deferred"}
    assert (last.status, last.dsn, last.relay) == ("bounced", "5.4.7", "none")
    assert last.reply.startswith("554 5.4.7 Delivery time expired"), last.reply
    assert "451 4.3.0 Temporary local problem" in last.reply, "the last error is kept"
    assert 3.0 <= last.delay < 8.0, last.delay
    assert sink.messages == []


@pytest.mark.parametrize(
    ("failure", "dsn"),
    [
        ("451 4.3.0 Queue file write error", "4.3.0"),
        ("554 5.6.0 Message rejected as spam", "5.6.0"),
        ("drop", "4.4.2"),
        ("hang", "4.4.2"),
    ],
)
def test_failure_at_the_final_dot(
    failure: str,
    dsn: str,
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
) -> None:
    """The server fails the first transaction after the data: a 4xx, or a dropped or
    silent connection (data_timeout 3 s), is retried and delivered exactly once; a 5xx
    bounces every recipient of the transaction."""
    rcpts = ["one@dest.test", "two@dest.test"]
    sink = make_sink(MX1, name="mx1.dest.test")
    sink.on_data(failure, times=1)
    relay = delivering_relay()
    data = make_message(f"dot-{failure.split()[0]}")
    qid = submit(relay, rcpts, data)
    wait_removed(relay, qid, timeout=20)
    for rcpt in rcpts:
        first, *rest = deliveries(relay, qid, rcpt)
        assert first.dsn == dsn
        if dsn.startswith("5"):
            assert first.status == "bounced"
            assert rest == []
        else:
            assert first.status == "deferred"
            assert [d.status for d in rest] == ["sent"]
    if dsn.startswith("5"):
        assert sink.messages == []
    else:
        assert_delivered_intact(sink, qid, data, rcpts)


def test_tls_required_without_starttls_defers(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
    sink_port: int,
) -> None:
    rcpt = "secret@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test")  # no STARTTLS offered
    relay = delivering_relay(delivery={"tls": "required"})
    qid = submit(relay, [rcpt], make_message("tls-required"))
    (line, *_) = wait_status(relay, qid, rcpt, "deferred")
    assert line.dsn == "4.7.4"
    assert line.reply.startswith("451 4.7.4 "), line.reply
    assert line.relay == relay_of("mx1.dest.test", MX1, sink_port)
    envelope = envelope_when(relay, qid, lambda e: e["state"] == "deferred")
    state = recipient_state(envelope, rcpt)
    assert state["state"] == "pending"
    assert state["last_reply"].startswith("451 4.7.4")
    assert sink.connections >= 1
    assert sink.messages == []
    assert sink.rcpt_attempts[rcpt] == 0, "nothing is sent in clear"
    assert qid in relay.queued_ids()


@pytest.mark.parametrize("policy", ["opportunistic", "required", "verify"])
def test_starttls_is_used_when_offered(
    policy: str,
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
    sink_cert: trustme.LeafCert,
) -> None:
    rcpt = "tls@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test", tls_cert=sink_cert)
    relay = delivering_relay(delivery={"tls": policy})
    data = make_message(f"tls-{policy}")
    qid = submit(relay, [rcpt], data)
    wait_removed(relay, qid)
    assert statuses(relay, qid, rcpt) == ["sent"]
    assert_delivered_intact(sink, qid, data, [rcpt])
    (copy,) = sink.messages
    assert copy.tls


def test_tls_verify_with_a_certificate_for_another_name_defers(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
    ca: trustme.CA,
) -> None:
    rcpt = "verify@dest.test"
    wrong = ca.issue_cert("some-other-host.test")
    sink = make_sink(MX1, name="mx1.dest.test", tls_cert=wrong)
    relay = delivering_relay(delivery={"tls": "verify"})
    qid = submit(relay, [rcpt], make_message("tls-verify-wrong"))
    (line, *_) = wait_status(relay, qid, rcpt, "deferred")
    assert line.dsn.startswith("4.7."), line
    wait_until(lambda: sink.connections >= 1, 5, "a connection attempt")
    assert sink.messages == []
    assert sink.rcpt_attempts[rcpt] == 0


def test_opportunistic_tls_handshake_failure_falls_back_to_plaintext(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
    sink_cert: trustme.LeafCert,
) -> None:
    """STARTTLS offered, but the handshake fails (the server speaks only TLS 1.0):
    opportunistic TLS delivers in plaintext over a new connection, as Postfix does."""
    import ssl

    rcpt = "fallback@dest.test"
    sink = make_sink(
        MX1, name="mx1.dest.test", tls_cert=sink_cert, tls_max_version=ssl.TLSVersion.TLSv1
    )
    relay = delivering_relay()
    data = make_message("tls-fallback")
    qid = submit(relay, [rcpt], data)
    wait_removed(relay, qid)
    assert statuses(relay, qid, rcpt) == ["sent"]
    assert_delivered_intact(sink, qid, data, [rcpt])
    (copy,) = sink.messages
    assert not copy.tls
    assert sink.connections == 2


def test_opportunistic_tls_refused_by_454_continues_in_plaintext(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
    sink_cert: trustme.LeafCert,
) -> None:
    """STARTTLS advertised, but the command answered "454 TLS not available due to
    temporary reason" (RFC 3207): opportunistic TLS may, and Postfix's "may" level
    does, deliver without TLS rather than defer the mail."""
    rcpt = "no-tls-today@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test", tls_cert=sink_cert)
    sink.starttls_reply = "454 4.7.0 TLS not available due to temporary reason"
    relay = delivering_relay()
    data = make_message("tls-454")
    qid = submit(relay, [rcpt], data)
    wait_removed(relay, qid, timeout=10)
    assert statuses(relay, qid, rcpt) == ["sent"], deliveries(relay, qid)
    assert_delivered_intact(sink, qid, data, [rcpt])
    (copy,) = sink.messages
    assert not copy.tls


def test_message_too_big_for_the_next_hop_bounces_without_sending(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
) -> None:
    rcpt = "small@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test", size_limit=300)  # EHLO: SIZE 300
    relay = delivering_relay()
    qid = submit(relay, [rcpt], make_message("big", extra="x" * 500 + "\r\n"))
    wait_removed(relay, qid)
    (line,) = deliveries(relay, qid)
    assert (line.status, line.dsn) == ("bounced", "5.3.4")
    assert sink.rcpt_attempts[rcpt] == 0
    assert sink.messages == []


def test_a_destination_marked_unreachable_defers_new_mail_never_bounces_it(
    dest: str,
    make_sink: Callable[..., Sink],
    delivering_relay: RelayFactory,
) -> None:
    """Three sessions in a row refused at the greeting (554) mark the destination
    unreachable for a while. Whatever becomes of those three messages, a new message
    in the cool-off was never tried: it may be deferred, never bounced with a reply
    that no server gave for it."""
    sink = make_sink(MX1, name="mx1.dest.test")
    sink.on_connect("554 5.7.1 No SMTP service here right now", times=3)
    relay = delivering_relay()

    def first_result(rcpt: str, tag: str) -> LogDelivery:
        qid = submit(relay, [rcpt], make_message(tag))
        wait_until(
            lambda: deliveries(relay, qid, rcpt), 10, lambda: f"a result for {qid}\n{relay.log()}"
        )
        return deliveries(relay, qid, rcpt)[0]

    for n in range(3):
        first_result(f"early{n}@dest.test", f"early-{n}")
    assert sink.connections == 3
    first = first_result("later@dest.test", "later")
    assert first.status != "bounced", first
