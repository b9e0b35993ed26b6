"""Fixtures for the delivery tests: a pytest plugin, loaded by each test_delivery_*.py
module with ``pytest_plugins = ["tests.integration.delivery_fixtures"]``.

``dns`` is a fresh authoritative DNS server on 127.0.0.1; ``make_sink`` starts receiving
SMTP servers on 127.0.0.x (all on ``sink_port``, as [delivery] port is one number);
``delivering_relay`` starts the real daemon delivering by MX through that DNS server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.integration.daemon import Daemon
from tests.integration.delivery_support import DOWN, MX1, MX2, MX3
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink, free_port


@pytest.fixture
def dns() -> Iterator[TestDNSServer]:
    """A fresh authoritative DNS server on 127.0.0.1:<port> with an empty zone."""
    server = TestDNSServer().start()
    yield server
    server.stop()


@pytest.fixture
def sink_port() -> int:
    """One port free on every sink address: [delivery] port is one number for all MXs."""
    return free_port([MX1, MX2, MX3, DOWN, "::1"])


@pytest.fixture
def sink_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(
        "mx1.dest.test",
        "mx2.dest.test",
        "mx.other.test",
        "localhost",
        MX1,
        MX2,
        MX3,
        DOWN,
        "::1",
    )


@pytest.fixture
def sink_ca_file(tmp_path: Path, ca: trustme.CA) -> str:
    path = tmp_path / "sink-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def make_sink(sink_port: int) -> Iterator[Callable[..., Sink]]:
    """``make_sink(MX1, tls_cert=..., ...)`` -> a started Sink on ``MX1:sink_port``."""
    sinks: list[Sink] = []

    def make(host: str, **kwargs: Any) -> Sink:
        sink = Sink(host, kwargs.pop("port", sink_port), **kwargs).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
def delivery_config(
    dns: TestDNSServer, sink_port: int, sink_ca_file: str
) -> Callable[..., dict[str, Any]]:
    """``delivery_config(**keys)`` -> the [delivery] table for an MX-mode test relay."""

    def config(**keys: Any) -> dict[str, Any]:
        return {
            "mode": "mx",
            "port": sink_port,
            "nameservers": [dns.nameserver],
            "retry_schedule": ["1s"],
            "max_queue_lifetime": "30s",
            "connect_timeout": "2s",
            "command_timeout": "3s",
            "data_timeout": "3s",
            "tls": "opportunistic",
            "ca_file": sink_ca_file,
            **keys,
        }

    return config


@pytest.fixture
def delivering_relay(
    make_daemon: Callable[..., Daemon], delivery_config: Callable[..., dict[str, Any]]
) -> Callable[..., Daemon]:
    """``delivering_relay(delivery={...}, **sections)``: a daemon delivering by MX (by default)."""

    def start(
        name: str = "relay", delivery: dict[str, Any] | None = None, **sections: dict[str, Any]
    ) -> Daemon:
        overrides: dict[str, dict[str, Any]] = {"delivery": delivery_config(**(delivery or {}))}
        overrides.update(sections)
        return make_daemon(name=name, overrides=overrides)

    return start
