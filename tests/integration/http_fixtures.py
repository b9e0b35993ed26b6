"""Fixtures for the tests of the HTTP endpoint: a pytest plugin, loaded with
``pytest_plugins = ["tests.integration.delivery_fixtures", "tests.integration.http_fixtures"]``.

Delivery goes by MX through the test DNS server: "dest.test" to MX1, "sender.test" (the
senders' own domain, where notices go) to MX2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import Daemon
from tests.integration.delivery_support import MX1, MX2
from tests.integration.dns_server import TestDNSServer
from tests.integration.http_support import TOKEN, Api, api_of, http_overrides


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "http-tokens"
    path.write_text(f"# operators\n{TOKEN}\n")
    return path


@pytest.fixture
def zone(dns: TestDNSServer) -> TestDNSServer:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    dns.zone.mx("sender.test", 10, "mx.sender.test")
    dns.zone.a("mx.sender.test", MX2)
    return dns


@pytest.fixture
def relay_with_api(
    zone: TestDNSServer, delivering_relay: Callable[..., Daemon], tokens_file: Path
) -> Callable[..., tuple[Daemon, Api]]:
    def start(**delivery: Any) -> tuple[Daemon, Api]:
        relay = delivering_relay(delivery=delivery, http=http_overrides(tokens_file))
        return relay, api_of(relay)

    return start
