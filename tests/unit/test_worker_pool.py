"""WorkerPool start-up: a worker that dies before serving fails the start at once."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from smtprelay import config
from smtprelay.inbound import workers
from smtprelay.inbound.workers import WorkerPool, WorkerStartError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_worker_that_exits_before_serving_fails_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    path = tmp_path / "smtprelay.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\n'
        f'[spool]\ndir = "{tmp_path / "spool"}"\n'
    )
    settings = config.load(path)
    # Stands in for the interpreter: exits at once, as a worker that cannot start does.
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(failing))
    # A start that waited for the ready timeout would hang the test (pytest-timeout).
    monkeypatch.setattr(workers, "READY_TIMEOUT", 3600.0)

    async def noop() -> None:
        pass

    async def main() -> None:
        pool = WorkerPool(settings, path, lambda envelope, data: None, None, noop)
        with pytest.raises(WorkerStartError, match="exited with code 3 before serving"):
            await pool.start()

    asyncio.run(main())
    with socket.socket() as again:  # the listener was closed with the failed start
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
