from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.integration.daemon import Daemon


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def make_daemon(tmp_path: Path, ca: trustme.CA) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``make_daemon(overrides={...}, users={...})`` -> a started Daemon."""
    started: list[Daemon] = []

    def make(name: str = "relay", start: bool = True, **kwargs: Any) -> Daemon:
        daemon = Daemon(tmp_path / name, ca, **kwargs)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        daemon.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A relay with one user app1/secret-pw, loopback trusted."""
    return make_daemon(users={"app1": "secret-pw"})
