"""Delivery by MX: preference, fallback, implicit MX, null MX, NXDOMAIN, SERVFAIL, routes.

A real DNS server on a loopback port answers the relay's queries; real aiosmtpd sinks on
127.0.0.x receive the mail. Every test drives the real daemon over SMTP.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.delivery_support import (
    DOWN,
    MX1,
    MX2,
    assert_delivered_intact,
    deliveries,
    envelope_when,
    make_message,
    recipient_state,
    relay_of,
    send,
    statuses,
    submit,
    wait_removed,
    wait_status,
)
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink

pytest_plugins = ["tests.integration.delivery_fixtures"]


def two_mx(dns: TestDNSServer, first_ip: str = MX1) -> None:
    dns.zone.mx("dest.test", 20, "mx2.dest.test")
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", first_ip)
    dns.zone.a("mx2.dest.test", MX2)


def test_mx_preference_lowest_first(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    two_mx(dns)
    mx1 = make_sink(MX1, name="mx1.dest.test")
    mx2 = make_sink(MX2, name="mx2.dest.test")
    relay = delivering_relay()
    sent = {}
    for n in range(3):
        data = make_message(f"pref-{n}")
        sent[submit(relay, [f"user{n}@dest.test"], data)] = (n, data)
    for qid, (n, data) in sent.items():
        wait_removed(relay, qid)
        assert_delivered_intact(mx1, qid, data, [f"user{n}@dest.test"])
        (line,) = deliveries(relay, qid)
        assert line.status == "sent"
        assert line.dsn == "2.0.0"
        assert line.relay == relay_of("mx1.dest.test", MX1, sink_port)
        assert line.reply == "250 2.0.0 Ok: queued by sink"
    assert mx2.connections == 0
    assert mx2.messages == []


@pytest.mark.parametrize("failure", ["refused", "hang", "drop", "421"])
def test_fallback_to_second_mx_when_first_is_down(
    failure: str,
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    """refused: nothing listens; hang: TCP accepted, no greeting (command timeout 3 s);
    drop: greeting, then the connection closes at EHLO; 421: the greeting is 421."""
    two_mx(dns, first_ip=DOWN)
    first = None
    if failure != "refused":
        first = make_sink(DOWN, name="mx1.dest.test")
        first.on_connect("421 4.3.2 Service not available" if failure == "421" else failure)
    mx2 = make_sink(MX2, name="mx2.dest.test")
    relay = delivering_relay()
    data = make_message(f"fallback-{failure}")
    qid = submit(relay, ["bob@dest.test"], data)
    wait_removed(relay, qid)
    assert_delivered_intact(mx2, qid, data, ["bob@dest.test"])
    (line,) = deliveries(relay, qid)
    assert (line.status, line.dsn) == ("sent", "2.0.0")
    assert line.relay == relay_of("mx2.dest.test", MX2, sink_port)
    if first is not None:
        assert first.connections == 1, "the first MX was tried first"
        assert first.messages == []


def test_implicit_mx_uses_the_domain_address(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    dns.zone.a("implicit.test", MX2)  # no MX records at all: the domain is its own MX
    sink = make_sink(MX2, name="implicit.test")
    relay = delivering_relay()
    data = make_message("implicit")
    qid = submit(relay, ["carol@implicit.test"], data)
    wait_removed(relay, qid)
    assert_delivered_intact(sink, qid, data, ["carol@implicit.test"])
    (line,) = deliveries(relay, qid)
    assert (line.status, line.relay) == ("sent", relay_of("implicit.test", MX2, sink_port))


def test_mx_with_only_an_ipv6_address(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    dns.zone.mx("six.test", 10, "mx6.six.test")
    dns.zone.aaaa("mx6.six.test", "::1")
    sink = make_sink("::1", name="mx6.six.test")
    relay = delivering_relay()
    data = make_message("aaaa")
    qid = submit(relay, ["dave@six.test"], data)
    wait_removed(relay, qid)
    assert_delivered_intact(sink, qid, data, ["dave@six.test"])
    (line,) = deliveries(relay, qid)
    assert (line.status, line.relay) == ("sent", relay_of("mx6.six.test", "::1", sink_port))


def test_null_mx_bounces_without_connecting(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
) -> None:
    dns.zone.null_mx("nomail.test")
    dns.zone.a("nomail.test", MX1)  # an address exists, but null MX says: no mail here
    sink = make_sink(MX1)
    relay = delivering_relay()
    qid = submit(relay, ["nobody@nomail.test"], make_message("nullmx"))
    wait_removed(relay, qid)
    (line,) = deliveries(relay, qid)
    assert (line.status, line.dsn, line.relay) == ("bounced", "5.1.10", "none")
    assert line.reply.startswith("556 5.1.10 "), line.reply
    assert sink.connections == 0


def test_nxdomain_bounces(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    """One message, a good domain and one that does not exist: one sent, one bounced."""
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    sink = make_sink(MX1, name="mx1.dest.test")
    relay = delivering_relay()
    data = make_message("nxdomain")
    qid = submit(relay, ["ok@dest.test", "who@no-such-domain.test"], data)
    wait_removed(relay, qid)
    (bounced,) = deliveries(relay, qid, "who@no-such-domain.test")
    assert (bounced.status, bounced.dsn, bounced.relay) == ("bounced", "5.1.2", "none")
    assert bounced.reply.startswith("550 5.1.2 "), bounced.reply
    assert "no-such-domain.test" in bounced.reply
    (sent,) = deliveries(relay, qid, "ok@dest.test")
    assert (sent.status, sent.relay) == ("sent", relay_of("mx1.dest.test", MX1, sink_port))
    assert_delivered_intact(sink, qid, data, ["ok@dest.test"])
    assert dns.zone.queries[("no-such-domain.test", "MX")] >= 1


def test_servfail_defers_then_delivers_when_dns_recovers(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    dns.zone.servfail("dest.test")
    sink = make_sink(MX1, name="mx1.dest.test")
    relay = delivering_relay()
    data = make_message("servfail")
    qid = submit(relay, ["erin@dest.test"], data)
    (deferred, *_) = wait_status(relay, qid, "erin@dest.test", "deferred")
    assert (deferred.dsn, deferred.relay) == ("4.4.3", "none")
    assert deferred.reply.startswith("451 4.4.3 "), deferred.reply
    envelope = envelope_when(relay, qid, lambda e: e["state"] == "deferred")
    rcpt = recipient_state(envelope, "erin@dest.test")
    assert rcpt["state"] == "pending"
    assert rcpt["attempts"] >= 1
    assert rcpt["last_reply"].startswith("451 4.4.3")
    assert envelope["next_attempt"] > envelope["arrival"]
    assert sink.connections == 0

    dns.zone.servfail("dest.test", on=False)
    wait_removed(relay, qid)
    assert statuses(relay, qid, "erin@dest.test")[-1] == "sent"
    assert set(statuses(relay, qid, "erin@dest.test")[:-1]) == {"deferred"}
    (sent,) = [d for d in deliveries(relay, qid) if d.status == "sent"]
    assert sent.relay == relay_of("mx1.dest.test", MX1, sink_port)
    assert_delivered_intact(sink, qid, data, ["erin@dest.test"])


def test_route_overrides_mx(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    """[delivery.routes] sends a domain to a fixed host:port whatever its MX says."""
    dns.zone.mx("routed.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    mx = make_sink(MX1)
    routed = make_sink(MX2)
    # The harness writes keys bare, so a domain (dotted) key is quoted here.
    relay = delivering_relay(**{"delivery.routes": {"routed.test": f"{MX2}:{sink_port}"}})
    data = make_message("route")
    qid = submit(relay, ["frank@routed.test"], data)
    wait_removed(relay, qid)
    assert_delivered_intact(routed, qid, data, ["frank@routed.test"])
    (line,) = deliveries(relay, qid)
    assert (line.status, line.relay) == ("sent", relay_of(MX2, MX2, sink_port))
    assert mx.connections == 0


def test_mx_pointing_at_this_relay_uses_only_better_mxs(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    """RFC 5321 5.1: the relay (hostname relay.test) is an MX of loop.test, so only
    the more preferred MX is used; when the relay is the best MX, the mail bounces."""
    dns.zone.mx("backup.test", 10, "mx1.dest.test")
    dns.zone.mx("backup.test", 20, "relay.test")
    dns.zone.mx("loop.test", 10, "relay.test")
    dns.zone.mx("loop.test", 20, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    dns.zone.a("relay.test", MX2)
    mx1 = make_sink(MX1, name="mx1.dest.test")
    me = make_sink(MX2, name="relay.test")
    relay = delivering_relay()
    data = make_message("backup-mx")
    qid = submit(relay, ["a@backup.test", "b@loop.test"], data)
    wait_removed(relay, qid)
    (sent,) = deliveries(relay, qid, "a@backup.test")
    assert (sent.status, sent.relay) == ("sent", relay_of("mx1.dest.test", MX1, sink_port))
    assert_delivered_intact(mx1, qid, data, ["a@backup.test"])
    (looped,) = deliveries(relay, qid, "b@loop.test")
    assert (looped.status, looped.dsn) == ("bounced", "5.4.6")
    assert me.connections == 0


def test_internationalised_domain_is_looked_up_by_its_a_label(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
) -> None:
    dns.zone.mx("xn--bcher-kva.test", 10, "mx1.dest.test")  # bücher.test
    dns.zone.a("mx1.dest.test", MX1)
    sink = make_sink(MX1, name="mx1.dest.test", smtputf8=True)
    relay = delivering_relay()
    rcpt = "anna@bücher.test"
    data = make_message("idn")
    with smtplib.SMTP(LOOPBACK, relay.port, local_hostname="client.test") as client:
        client.ehlo()
        qid = send(client, [rcpt], data, mail_options=("SMTPUTF8",))
    wait_removed(relay, qid)
    (line,) = deliveries(relay, qid)
    assert (line.status, line.relay) == ("sent", relay_of("mx1.dest.test", MX1, sink_port))
    assert_delivered_intact(sink, qid, data, [rcpt])
    assert dns.zone.queries[("xn--bcher-kva.test", "MX")] >= 1
