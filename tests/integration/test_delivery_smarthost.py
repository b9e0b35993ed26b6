"""Smarthost mode: STARTTLS (verified), AUTH, and failover to the second host."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.integration.daemon import Daemon
from tests.integration.delivery_support import (
    DOWN,
    MX2,
    assert_delivered_intact,
    deliveries,
    make_message,
    relay_of,
    submit,
    wait_removed,
)
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink

pytest_plugins = ["tests.integration.delivery_fixtures"]

USER, PASSWORD = "relay-user", "s3cret smarthost pw"


@pytest.mark.parametrize("first", ["down", "auth-rejected", "tls-refused"])
def test_smarthost_auth_and_failover(
    first: str,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
    sink_cert: trustme.LeafCert,
    tmp_path: Path,
) -> None:
    """down: nothing listens on the first host; auth-rejected: it refuses our password
    (535); tls-refused: it does not offer STARTTLS, which a smarthost requires."""
    password_file = tmp_path / "smarthost.pw"
    password_file.write_text(PASSWORD + "\n")  # the trailing newline is not the password
    first_sink = None
    if first == "auth-rejected":
        first_sink = make_sink(
            DOWN, tls_cert=sink_cert, auth=(USER, "another password"), auth_required=True
        )
    elif first == "tls-refused":
        first_sink = make_sink(DOWN, auth=(USER, PASSWORD), auth_require_tls=False)
    second = make_sink(MX2, tls_cert=sink_cert, auth=(USER, PASSWORD), auth_required=True)
    relay = delivering_relay(
        delivery={"mode": "smarthost"},
        **{
            "delivery.smarthost": {
                "hosts": [f"{DOWN}:{sink_port}", f"{MX2}:{sink_port}"],
                "tls": "starttls",
                "username": USER,
                "password_file": str(password_file),
            }
        },
    )
    data = make_message(f"smarthost-{first}")
    rcpts = ["x@anywhere.test", "y@elsewhere.test"]
    qid = submit(relay, rcpts, data)
    wait_removed(relay, qid)
    lines = deliveries(relay, qid)
    assert sorted(d.to for d in lines) == sorted(rcpts)
    for line in lines:
        assert (line.status, line.dsn) == ("sent", "2.0.0"), line
        assert line.relay == relay_of(MX2, MX2, sink_port)
    # Both domains go through the smarthost: one transaction, both recipients.
    assert_delivered_intact(second, qid, data, rcpts)
    (copy,) = second.messages
    assert copy.tls
    assert copy.auth_user == USER
    if first_sink is not None:
        assert first_sink.connections >= 1, "the first smarthost was tried first"
        assert first_sink.messages == []
    if first == "auth-rejected":
        assert first_sink is not None
        assert first_sink.auth_attempts and not any(ok for *_, ok in first_sink.auth_attempts)
    if first == "tls-refused":
        assert first_sink is not None
        assert first_sink.auth_attempts == [], "no password sent without TLS"


def test_smarthost_by_name_verified_and_failover_past_an_unknown_name(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    """Smarthosts named by host name: the first does not exist (NXDOMAIN), the second is
    found in DNS and its certificate is verified against that name."""
    dns.zone.a("smtp.provider.test", MX2)
    password_file = tmp_path / "smarthost.pw"
    password_file.write_text(PASSWORD)
    sink = make_sink(
        MX2,
        name="smtp.provider.test",
        tls_cert=ca.issue_cert("smtp.provider.test"),
        auth=(USER, PASSWORD),
        auth_required=True,
    )
    relay = delivering_relay(
        delivery={"mode": "smarthost"},
        **{
            "delivery.smarthost": {
                "hosts": [f"gone.provider.test:{sink_port}", f"smtp.provider.test:{sink_port}"],
                "tls": "starttls",
                "username": USER,
                "password_file": str(password_file),
            }
        },
    )
    data = make_message("smarthost-by-name")
    qid = submit(relay, ["z@anywhere.test"], data)
    wait_removed(relay, qid)
    (line,) = deliveries(relay, qid)
    assert (line.status, line.relay) == ("sent", relay_of("smtp.provider.test", MX2, sink_port))
    assert_delivered_intact(sink, qid, data, ["z@anywhere.test"])
    (copy,) = sink.messages
    assert copy.tls
    assert copy.auth_user == USER
