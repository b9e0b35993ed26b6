"""Fixtures for the bounce tests: a pytest plugin, loaded by each test_bounces*.py module
with ``pytest_plugins = ["tests.integration.delivery_fixtures",
"tests.integration.bounce_fixtures"]``.

The relay delivers by MX through the test DNS server: "dest.test" and "other.test" go
to ``dest`` (MX1), "sender.test" to ``mailbox`` (MX2, the sender's mail server, where
notices arrive), "admin.test" to ``admin`` (MX3: [bounce] postmaster, notify_admin).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.delivery_support import MX1, MX2, MX3
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink


@pytest.fixture
def zone(dns: TestDNSServer) -> TestDNSServer:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    dns.zone.mx("other.test", 10, "mx.other.test")
    dns.zone.a("mx.other.test", MX1)
    dns.zone.mx("sender.test", 10, "mx.sender.test")
    dns.zone.a("mx.sender.test", MX2)
    dns.zone.mx("admin.test", 10, "mx.admin.test")
    dns.zone.a("mx.admin.test", MX3)
    return dns


@pytest.fixture
def dest(zone: TestDNSServer, make_sink: Callable[..., Sink]) -> Sink:
    """The recipients' server (dest.test, other.test): no DSN extension, like aiosmtpd."""
    return make_sink(MX1, name="mx1.dest.test", smtputf8=True)


@pytest.fixture
def mailbox(zone: TestDNSServer, make_sink: Callable[..., Sink]) -> Sink:
    """The sender's mail server (sender.test), where the notices arrive."""
    return make_sink(MX2, name="mx.sender.test", smtputf8=True)


@pytest.fixture
def admin(zone: TestDNSServer, make_sink: Callable[..., Sink]) -> Sink:
    """The operator's mail server (admin.test): [bounce] postmaster and notify_admin."""
    return make_sink(MX3, name="mx.admin.test")
