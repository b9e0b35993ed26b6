"""Start-up is all or nothing: a listener that cannot be bound stops the daemon before
any client has been greeted (let alone had mail acknowledged)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest

from tests.integration.daemon import LOOPBACK, Daemon


class _Prober(threading.Thread):
    """Connects to ``port`` again and again until told to stop (or 30 s pass) and keeps
    whatever each connection is sent before it closes."""

    def __init__(self, port: int, tls: bool = False) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.tls = tls
        self.done = threading.Event()
        self.received: list[bytes] = []
        self.connections = 0

    def run(self) -> None:
        deadline = time.monotonic() + 30
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                conn = socket.create_connection((LOOPBACK, self.port), timeout=0.5)
            except OSError:
                time.sleep(0.005)
                continue
            self.connections += 1
            with conn:
                if self.tls:
                    try:
                        conn = self._handshake(conn)
                    except (OSError, ssl.SSLError):
                        self.received.append(b"")  # closed before any TLS was spoken
                        continue
                self.received.append(self._read(conn, deadline))

    @staticmethod
    def _handshake(conn: socket.socket) -> socket.socket:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn.settimeout(10)  # the daemon exits (and the connection closes) well before
        tls = context.wrap_socket(conn)
        tls.settimeout(0.5)
        return tls

    def _read(self, conn: socket.socket, deadline: float) -> bytes:
        """Until the peer closes; a connection waiting in the backlog of a socket that is
        never served gets nothing, then a close when the daemon exits."""
        data = b""
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(1024)
            except TimeoutError:
                if self.done.is_set():
                    return data
                continue
            except OSError:
                return data
            if not chunk:
                return data
            data += chunk
        return data


@pytest.mark.parametrize("workers", [0, 1])
def test_a_busy_http_port_stops_the_start_before_any_greeting(
    make_daemon: Callable[..., Daemon], workers: int
) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = make_daemon(
            start=False,
            overrides={
                "server": {"workers": workers},
                "http": {"listen": f"{LOOPBACK}:{port}"},
            },
        )
        assert relay.tls_port is not None
        probers = [_Prober(relay.port), _Prober(relay.tls_port, tls=True)]
        for prober in probers:
            prober.start()
        try:
            with pytest.raises(RuntimeError, match="exited 1"):
                relay.start()
        finally:
            for prober in probers:
                prober.done.set()
                prober.join(10)
    # Nothing was ever sent on either SMTP port: no 220, no TLS handshake either.
    for prober in probers:
        assert all(data == b"" for data in prober.received), prober.received
    log = relay.log()
    assert (
        f"cannot start: [http] listen {LOOPBACK}:{port}: cannot listen: "
        "Address already in use" in log
    )
    assert "Traceback" not in log
    assert "smtprelay ready" not in log and "inbound worker" not in log
    assert "Task was destroyed" not in log and "never retrieved" not in log
    assert not any("READY=1" in n for n in relay.notifications)
