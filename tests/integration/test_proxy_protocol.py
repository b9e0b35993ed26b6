"""Two smtprelay nodes behind a real HAProxy (PROXY protocol v1 and v2): relay policy,
logs and ``Received:`` use the client's address as HAProxy saw it, and a header from
anyone but the balancer, or no header, closes the connection before any greeting."""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from smtprelay import replies
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.inbound_support import (
    RECIPIENT,
    SENDER,
    assert_reply,
    client_context,
    line,
    submit,
    wait_for_log,
)
from tests.polling import wait_until

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy; make deps does it)"
)

TRUSTED_CLIENT = "127.0.0.5"  # in the nodes' trusted_networks
OTHER_CLIENT = "127.0.0.6"  # not: must authenticate
FORGER = "127.0.0.7"  # not a balancer
PROBE = "127.0.0.9"  # the test's own check that haproxy listens

HAPROXY_CONFIG = """\
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend smtp
  bind {host}:{smtp}
  default_backend nodes
backend nodes
  balance roundrobin
  server a {host}:{a} send-proxy
  server b {host}:{b} send-proxy-v2
frontend smtps
  bind {host}:{smtps}
  default_backend nodes_tls
backend nodes_tls
  balance roundrobin
  server a {host}:{a_tls} send-proxy-v2
  server b {host}:{b_tls} send-proxy
"""


class Balancer:
    def __init__(self, workdir: Path, nodes: list[Daemon]) -> None:
        self.smtp_port, self.smtps_port = free_port(), free_port()
        a, b = nodes
        assert a.tls_port and b.tls_port
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(
            HAPROXY_CONFIG.format(
                host=LOOPBACK,
                smtp=self.smtp_port,
                smtps=self.smtps_port,
                a=a.port,
                b=b.port,
                a_tls=a.tls_port,
                b_tls=b.tls_port,
            )
        )
        assert HAPROXY is not None
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def listening() -> bool:
            try:
                socket.create_connection(
                    (LOOPBACK, self.smtps_port), timeout=1, source_address=(PROBE, 0)
                ).close()
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr
                return False
            return True

        wait_until(listening, timeout=10, what="haproxy listening")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[list[Daemon], Balancer]]:
    overrides: dict[str, dict[str, Any]] = {
        "server": {"proxy_protocol": [f"{LOOPBACK}/32"]},
        "relay": {"trusted_networks": [f"{TRUSTED_CLIENT}/32"]},
        "tls": {"handshake_timeout": "2s"},
    }
    nodes = [Daemon(tmp_path / name, ca, overrides=overrides).start() for name in "ab"]
    balancer = Balancer(tmp_path, nodes)
    yield nodes, balancer
    balancer.stop()
    for node in nodes:
        node.kill()


def test_nodes_see_the_client_address_haproxy_saw(cluster: tuple[list[Daemon], Balancer]) -> None:
    nodes, balancer = cluster
    qids = []
    # Round robin: a, b, a, b; the header is v1 to node a and v2 to node b.
    for _ in nodes:
        with smtplib.SMTP(
            LOOPBACK, balancer.smtp_port, timeout=15, source_address=(TRUSTED_CLIENT, 0)
        ) as client:
            client.ehlo("trusted.test")
            qids.append(submit(client, b"Subject: via haproxy\r\n\r\nbody\r\n"))
    for _ in nodes:
        with smtplib.SMTP(
            LOOPBACK, balancer.smtp_port, timeout=15, source_address=(OTHER_CLIENT, 0)
        ) as client:
            client.ehlo("other.test")
            client.mail(SENDER)
            code, text = client.rcpt(RECIPIENT)
            assert_reply(line(code, text), replies.RELAY_DENIED)
    for node in nodes:
        wait_for_log(node, rf"connect from unknown\[{TRUSTED_CLIENT}\]")
        wait_for_log(node, rf"reject: RCPT from unknown\[{OTHER_CLIENT}\]: 554 5\.7\.1")
        assert f"unknown[{LOOPBACK}]" not in node.log()
    received = [node.message(qid) for node in nodes for qid in qids if qid in node.queued_ids()]
    assert len(received) == 2
    for message in received:
        assert f"[{TRUSTED_CLIENT}]".encode() in message.split(b"\r\n\r\n", 1)[0]


def test_implicit_tls_behind_haproxy(cluster: tuple[list[Daemon], Balancer]) -> None:
    nodes, balancer = cluster
    trusted = re.compile(rf"connect from unknown\[{re.escape(TRUSTED_CLIENT)}\]")
    # Round robin, but the start-up probe took a turn too and haproxy may skip a
    # server after the probe's aborted connection: send until both nodes had a client
    # (bounded), rather than counting on the order.
    for _ in range(3 * len(nodes)):
        with smtplib.SMTP_SSL(
            LOOPBACK,
            balancer.smtps_port,
            timeout=15,
            source_address=(TRUSTED_CLIENT, 0),
            context=client_context(nodes[0]),
        ) as client:
            client.ehlo("trusted.test")
            submit(client, b"Subject: implicit via haproxy\r\n\r\nbody\r\n")
        if all(trusted.search(node.log()) for node in nodes):
            break
    for node in nodes:
        wait_for_log(node, trusted.pattern)
        assert "TLS handshake failed" not in node.log()


def _greeting_or_close(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    try:
        return sock.recv(1000)
    except ConnectionResetError:
        return b""


def test_a_header_from_anyone_else_or_no_header_closes(
    cluster: tuple[list[Daemon], Balancer],
) -> None:
    node = cluster[0][0]
    with socket.create_connection((LOOPBACK, node.port), source_address=(FORGER, 0)) as sock:
        sock.sendall(f"PROXY TCP4 {TRUSTED_CLIENT} {LOOPBACK} 40000 25\r\n".encode())
        assert _greeting_or_close(sock) == b""
    wait_for_log(
        node,
        rf"warning: PROXY protocol: not a load balancer in \[server\] "
        rf"proxy_protocol: closing connection from unknown\[{FORGER}\]",
    )
    # From the balancer's address but without a header: plain SMTP is not a header.
    with socket.create_connection((LOOPBACK, node.port)) as sock:
        sock.sendall(b"EHLO sneaky.test\r\n")
        assert _greeting_or_close(sock) == b""
    wait_for_log(
        node,
        rf"warning: PROXY protocol: .*: closing connection from "
        rf"unknown\[{LOOPBACK}\]",
    )
    # Silence: the header must come within the handshake time limit (the relay closes
    # first; the client's own 10 s timeout would raise instead).
    with socket.create_connection((LOOPBACK, node.port)) as sock:
        assert _greeting_or_close(sock) == b""
    wait_for_log(node, r"no PROXY header within 2s")
    assert "Traceback" not in node.log()
