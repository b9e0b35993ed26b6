"""Connections to a destination: reused across messages, never more than the
per-destination limit at once -- both measured at the receiving server."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.delivery_support import (
    MX1,
    assert_delivered_intact,
    deliveries,
    make_message,
    send,
    statuses,
    wait_removed,
)
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]


def submit_many(relay: Daemon, count: int, tag: str) -> dict[str, tuple[str, bytes]]:
    """``count`` messages over one client connection; QID -> (recipient, data)."""
    sent: dict[str, tuple[str, bytes]] = {}
    with smtplib.SMTP(LOOPBACK, relay.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        for n in range(count):
            rcpt = f"user{n}@dest.test"
            data = make_message(f"{tag}-{n}")
            sent[send(c, [rcpt], data)] = (rcpt, data)
    return sent


def one_mx(dns: TestDNSServer) -> None:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)


def test_connection_reuse(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
) -> None:
    """N messages to one destination arrive over fewer than N connections."""
    one_mx(dns)
    sink = make_sink(MX1, name="mx1.dest.test")
    relay = delivering_relay(delivery={"per_destination_concurrency": 2})
    count = 10
    sent = submit_many(relay, count, "reuse")
    for qid, (rcpt, data) in sent.items():
        wait_removed(relay, qid)
        assert statuses(relay, qid, rcpt) == ["sent"]
        assert_delivered_intact(sink, qid, data, [rcpt])
    assert len(sink.messages) == count
    assert sink.connections < count
    # A new connection is opened only when none is idle, so never more than the limit.
    assert sink.connections <= 2, sink.connections
    assert len({m.connection for m in sink.messages}) == sink.connections


def test_per_destination_limit_is_never_exceeded(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
) -> None:
    one_mx(dns)
    limit = 3
    sink = make_sink(MX1, name="mx1.dest.test", data_delay=0.3)
    relay = delivering_relay(delivery={"per_destination_concurrency": limit, "concurrency": 50})
    count = 15
    sent = submit_many(relay, count, "limit")
    for qid, (rcpt, data) in sent.items():
        wait_removed(relay, qid, timeout=30)
        assert statuses(relay, qid, rcpt) == ["sent"]
        assert_delivered_intact(sink, qid, data, [rcpt])
    assert sink.max_open <= limit, f"{sink.max_open} connections open at once"
    assert sink.max_in_data <= limit, f"{sink.max_in_data} transactions at once"
    # The slow server made messages wait, so the limit was actually reached.
    assert sink.max_in_data >= 2, "no parallel delivery at all: the test proves nothing"


def test_connection_closed_by_the_server_while_idle_is_replaced(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
) -> None:
    """The server drops an idle kept-open connection (its own idle timeout, 421): the
    next message opens a new connection and is delivered at its first attempt."""
    one_mx(dns)
    sink = make_sink(MX1, name="mx1.dest.test", idle_timeout=0.5)
    relay = delivering_relay()
    first = submit_many(relay, 1, "idle-a")
    for qid in first:
        wait_removed(relay, qid)
    wait_until(lambda: sink.open_now == 0, 10, "the sink to drop the idle connection")
    second = submit_many(relay, 1, "idle-b")
    for qid, (rcpt, data) in second.items():
        wait_removed(relay, qid)
        assert statuses(relay, qid, rcpt) == ["sent"], deliveries(relay, qid)
        assert_delivered_intact(sink, qid, data, [rcpt])
    assert sink.connections == 2
