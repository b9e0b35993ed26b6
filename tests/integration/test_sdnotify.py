"""sd_notify(3) against a real unix datagram socket given as NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

from tests.integration.daemon import Daemon
from tests.polling import wait_until


def test_ready_status_watchdog_reloading_stopping(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(start=False)
    path = daemon.workdir / "systemd-notify.sock"
    received: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtprelay", "serve", "-c", str(daemon.config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def take(word: str) -> str | None:
            for message in received:
                if word in message.splitlines():
                    received.remove(message)
                    return message
            with contextlib.suppress(TimeoutError):  # the receive timeout paces the polling
                received.append(sock.recv(4096).decode())
            return None

        def wait_for(word: str, timeout: float = 20.0) -> str:
            return wait_until(
                lambda: take(word), timeout, lambda: f"{word}; got {received}", interval=0
            )

        try:
            ready = wait_for("READY=1")
            assert f"MAINPID={proc.pid}" in ready.splitlines()
            # WatchdogSec=1s: pings at least every half second, with the queue status.
            ping = wait_for("WATCHDOG=1", timeout=3)
            assert any(
                line.startswith("STATUS=") and "queued" in line for line in ping.splitlines()
            )
            wait_for("WATCHDOG=1", timeout=3)
            proc.send_signal(signal.SIGHUP)
            wait_for("RELOADING=1")
            wait_for("READY=1")
            proc.send_signal(signal.SIGTERM)
            wait_for("STOPPING=1")
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
