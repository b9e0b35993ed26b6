"""Connection slots always come back, whatever the client does (health checks, port
scanners, failing or abandoned TLS handshakes, idle and non-reading clients), and a
failed handshake is one warning line, counted, never a traceback."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtprelay import replies
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.http_support import Api, api_of, http_overrides, metric_samples
from tests.integration.inbound_support import RawClient, assert_reply, client_context
from tests.polling import wait_until

LIMIT = 4


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("slots-token\n")
    return path


@pytest.fixture(params=[1, 0], ids=["worker", "in-process"])
def limited(
    request: pytest.FixtureRequest, make_daemon: Callable[..., Daemon], tokens: Path
) -> tuple[Daemon, Api]:
    relay = make_daemon(
        overrides={
            "server": {"max_connections": LIMIT, "timeout": "2s", "workers": request.param},
            "tls": {"handshake_timeout": "1s"},
            "http": http_overrides(tokens),
        }
    )
    return relay, Api(api_of(relay).port, token="slots-token")


def open_sessions(api: Api) -> int:
    return int(api.ok("GET", "/status")["connections"])


def connect(port: int) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=10)


def close_at_once(port: int) -> None:
    connect(port).close()


def reset(port: int) -> None:
    sock = connect(port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def plaintext_on_tls_port(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"EHLO scanner.test\r\n")
        sock.recv(100)  # the relay closes: b"" (or an alert)


def garbage_after_starttls(port: int) -> None:
    with connect(port) as sock:
        sock.recv(1000)
        sock.sendall(b"EHLO scanner.test\r\nSTARTTLS\r\n")
        _read_until(sock, b"220 2.0.0")
        sock.sendall(b"\x16\x03\x01\x00\x05garbage")
        sock.recv(100)


def tls10_only(port: int) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
    with connect(port) as sock, pytest.raises(ssl.SSLError):
        context.wrap_socket(sock)


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def abandoned() -> Iterator[list[socket.socket]]:
    """Connections a test opens and leaves silent (closed at the end)."""
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def test_every_slot_comes_back(limited: tuple[Daemon, Api], abandoned: list[socket.socket]) -> None:
    relay, api = limited
    assert relay.tls_port
    probes: list[tuple[Callable[[int], Any], int]] = [
        (close_at_once, relay.port),
        (reset, relay.port),
        (close_at_once, relay.tls_port),
        (reset, relay.tls_port),
        (plaintext_on_tls_port, relay.tls_port),
        (garbage_after_starttls, relay.port),
        (tls10_only, relay.tls_port),
    ]
    for probe, port in probes:
        for _ in range(3 * LIMIT):
            probe(port)
    # Abandoned handshakes: silence on the implicit-TLS port, and after STARTTLS. They
    # hold their slots until the handshake time limit, so together at most LIMIT.
    for _ in range(LIMIT // 2):
        abandoned.append(connect(relay.tls_port))
        sock = connect(relay.port)
        sock.recv(1000)
        sock.sendall(b"EHLO idle.test\r\nSTARTTLS\r\n")
        _read_until(sock, b"220 2.0.0")
        abandoned.append(sock)
    wait_until(lambda: open_sessions(api) == 0, timeout=15, what="every slot given back")

    # Every slot is usable: LIMIT real sessions get in, the next is refused.
    clients = [RawClient(relay.port) for _ in range(LIMIT)]
    try:
        for client in clients:
            assert client.greeting[-1].startswith("220 ")
        with RawClient(relay.port) as refused:
            assert_reply(refused.greeting[-1], replies.TOO_MANY_CONNECTIONS)
        assert open_sessions(api) == LIMIT
        status, body = api.get("/healthz")
        assert status == 503 and "connection slots in use" in str(body)
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: open_sessions(api) == 0, timeout=10, what="slots back after QUIT-less close")

    log = relay.log()
    assert "Traceback" not in log and "internal error" not in log
    failed = metric_samples(api.get("/metrics")[1])  # the slots' return implies the counts
    kinds = {
        labels[0][1]: n
        for (name, labels), n in failed.items()
        if name == "smtprelay_smtpd_tls_failures_total"
    }
    assert kinds["protocol_version"] == 3 * LIMIT
    assert kinds["not_tls"] == 3 * LIMIT  # plaintext on the TLS port
    assert kinds["other"] == 3 * LIMIT  # garbage after STARTTLS
    assert "closed" not in kinds  # a connection closed before a handshake is no failure
    assert kinds["timeout"] == LIMIT
    assert "client offers no TLS version at or above min_version TLSv1.2" in log
    assert "warning: TLS handshake failed (STARTTLS) from unknown[127.0.0.1]" in log
    assert (
        "warning: TLS handshake failed (implicit TLS) from unknown[127.0.0.1]: no "
        "handshake within 1s" in log
    )

    # Idle: nothing open, so a stop does not wait out the grace period for ghosts.
    assert relay.stop() == 0
    assert "stopping: no new connections, 0 session(s) open" in relay.log()


@pytest.mark.slow
def test_a_client_that_stops_reading_is_cut_off(limited: tuple[Daemon, Api]) -> None:
    """The relay's replies fill the client's window; the session times out and its
    connection is aborted rather than waiting for ever to flush."""
    relay, api = limited
    sock = connect(relay.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.recv(1000)
        sock.setblocking(False)
        # Pipelined EHLOs (not junk: a junk command limit would end the session first)
        # whose replies the client never reads; bounded in size and time.
        sent = 0
        deadline = time.monotonic() + 10
        command = b"EHLO client.test\r\n" * 1000
        while sent < 8_000_000 and time.monotonic() < deadline:
            try:
                sent += sock.send(command)
            except BlockingIOError:
                break  # the relay has stopped reading: its own writes are stuck
        assert open_sessions(api) == 1
        wait_until(lambda: open_sessions(api) == 0, timeout=20, what="the stuck session cut off")
    finally:
        sock.close()
    assert "timeout after" in relay.log()


def test_implicit_tls_over_the_limit_is_told_so_over_tls(limited: tuple[Daemon, Api]) -> None:
    relay, _ = limited
    assert relay.tls_port
    clients = [RawClient(relay.port) for _ in range(LIMIT)]
    try:
        context = client_context(relay)
        with (
            connect(relay.tls_port) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            assert_reply(tls.recv(1000).decode().strip(), replies.TOO_MANY_CONNECTIONS)
    finally:
        for client in clients:
            client.close()


def test_tls12_offers_only_aead_suites(limited: tuple[Daemon, Api]) -> None:
    relay, api = limited
    tls_port = relay.tls_port
    assert tls_port

    def tls12(ciphers: str) -> str:
        context = client_context(relay)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
        with (
            connect(tls_port) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            cipher = tls.cipher()
            assert cipher is not None
            return cipher[0]

    assert "GCM" in tls12("ECDHE+AESGCM")
    assert "CHACHA20" in tls12("ECDHE+CHACHA20")
    with pytest.raises(ssl.SSLError):
        tls12("ECDHE+AES256+SHA384:ECDHE+AES128+SHA256:ECDHE+SHA1:AES+SHA1")  # CBC only
    key = ("smtprelay_smtpd_tls_failures_total", (("kind", "no_shared_cipher"),))
    wait_until(
        lambda: metric_samples(api.get("/metrics")[1]).get(key) == 1,
        timeout=5,
        what="the failure counted",
    )
