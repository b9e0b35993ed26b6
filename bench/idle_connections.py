#!/usr/bin/env python3
"""Idle connections: memory per open SMTP session, and whether normal clients are still
served while thousands of sessions sit idle.

Starts `smtprelay serve` on loopback (max_connections raised above --connections, the
file-descriptor limit raised for itself and the daemon), measures the resident memory of
the main process and its inbound workers, opens --connections sessions that read the
greeting and then say nothing, measures again, and times --clients ordinary sessions
(EHLO, MAIL, RCPT, DATA, QUIT with smtplib) before and while the idle sessions are open.

Loopback only; bounded by --connections (at most 20,000) and the daemon's own timeout.
Usage (root, or a hard fd limit above the count):
    .venv/bin/python bench/idle_connections.py [--connections 10000] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from queue_scale import rss_kb  # main process + inbound workers (bench/ is on sys.path)

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
TOKEN = "idle-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start(
    workdir: Path, port: int, http_port: int, connections: int, workers: int
) -> subprocess.Popen[bytes]:
    (workdir / "tokens").write_text(TOKEN + "\n")
    config = workdir / "smtprelay.toml"
    config.write_text(f"""
[server]
hostname = "relay.bench"
listen = ["{LOOPBACK}:{port}"]
max_connections = {connections + 100}
timeout = "10m"
workers = {workers}
[spool]
dir = "{workdir / "spool"}"
[log]
level = "warning"
[http]
listen = "{LOOPBACK}:{http_port}"
tokens_file = "{workdir / "tokens"}"
[delivery]
mode = "smarthost"
[delivery.smarthost]
hosts = ["{LOOPBACK}:9"]
tls = "none"
""")
    notify_path = workdir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(60)
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtprelay", "serve", "-c", str(config)],
            cwd=REPO,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "log", "wb"),  # noqa: SIM115
        )
        while "READY=1" not in notify.recv(4096).decode().splitlines():
            pass
    return proc


def open_sessions(http_port: int) -> int:
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{http_port}/status", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(json.load(answer)["connections"])


def client_sessions(port: int, count: int) -> list[float]:
    """Seconds for each of ``count`` ordinary sessions, one after another."""
    times = []
    for n in range(count):
        started = time.perf_counter()
        with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
            client.sendmail(
                "app@example.com", [f"user{n}@example.net"], b"Subject: idle bench\r\n\r\nbody\r\n"
            )
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    if not 1 <= args.connections <= 20_000:
        parser.error("--connections: 1 to 20000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 1024  # each of ours and the daemon's (inherited)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            sys.exit(f"needs a file-descriptor limit of {want} (hard limit {hard}): run as root")
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    with tempfile.TemporaryDirectory(prefix="smtprelay-idle-") as tmp:
        workdir = Path(tmp)
        port, http_port = free_port(), free_port()
        proc = start(workdir, port, http_port, args.connections, args.workers)
        idle: list[socket.socket] = []
        try:
            client_sessions(port, 5)  # warm up
            before_rss = rss_kb(proc.pid, "VmRSS")
            baseline = client_sessions(port, args.clients)
            opened = time.monotonic()
            for _ in range(args.connections):
                sock = socket.create_connection((LOOPBACK, port), timeout=30)
                idle.append(sock)
                greeting = sock.recv(200)
                if not greeting.startswith(b"220 "):
                    sys.exit(f"session {len(idle)} was refused: {greeting!r}")
            opening = time.monotonic() - opened
            time.sleep(2)  # let the workers report and settle
            after_rss = rss_kb(proc.pid, "VmRSS")
            sessions = open_sessions(http_port)
            loaded = client_sessions(port, args.clients)
        finally:
            for sock in idle:
                sock.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    per = (after_rss - before_rss) / args.connections
    print(
        f"idle sessions opened:     {args.connections} in {opening:.1f} s "
        f"(workers={args.workers}); /status connections = {sessions}"
    )
    print(
        f"RSS main + workers:       {before_rss / 1024:.1f} MB before, "
        f"{after_rss / 1024:.1f} MB with them open"
    )
    print(f"RSS per idle session:     {per:.1f} KB")
    print(
        f"ordinary session (median / max of {args.clients}): "
        f"{statistics.median(baseline) * 1000:.1f} / {max(baseline) * 1000:.1f} ms alone, "
        f"{statistics.median(loaded) * 1000:.1f} / {max(loaded) * 1000:.1f} ms beside "
        f"the idle ones"
    )


if __name__ == "__main__":
    main()
