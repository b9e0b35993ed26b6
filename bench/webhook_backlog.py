"""A dead webhook receiver with a large backlog (issue 13, "bounded memory, no slowdown
of mail"), and the rate at which a backlog drains to a live receiver.

    .venv/bin/python bench/webhook_backlog.py                     # 200,000 events, 3 runs
    .venv/bin/python bench/webhook_backlog.py --backlog 20000 --messages 500 --runs 1

Four modes, each a fresh smtprelay delivering to an aiosmtpd counting sink:

* ``none``: an empty event store, no webhook;
* ``dead-empty``: one ``[[webhooks]]`` endpoint whose URL is a closed loopback port, no
  backlog yet (what the backlog adds is measured against this);
* ``dead-backlog``: the same, with BACKLOG events already in the store and in its
  outbox (written straight into the SQLite file before the daemon starts, as a long
  outage would leave it);
* ``drain``: DRAIN events in the outbox of an endpoint that is up (an aiohttp receiver
  in this process that verifies every signature with ``standardwebhooks``): events/s.

In the first three, C aiosmtplib clients send N messages of SIZE bytes; reported:
accepted/s (first MAIL to last 250), delivered/s at the sink (first to last message),
the main process's CPU ms per message (``/proc/PID/stat``), its RSS
(``/proc/PID/status`` VmRSS, sampled every 0.2 s: after start-up, peak, at the end; the
events stage lives in the main process) and the outbox rows left. Their order rotates
from run to run.
Everything is on 127.0.0.1 and bounded in count and time; smtprelay is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiosmtpd.controller import Controller  # noqa: E402

from bench.webhooks import LOOPBACK, free_port, load, wait_port  # noqa: E402
from smtprelay.config import WebhookSettings  # noqa: E402
from smtprelay.events.db import Database  # noqa: E402
from smtprelay.events.outbox import Outbox  # noqa: E402
from smtprelay.events.webhooks import configured, new_secret  # noqa: E402
from tests.integration.webhook_receiver import Receiver  # noqa: E402

BATCH = 10_000


class Sink:
    """Counts messages and when the first and last came."""

    def __init__(self) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self.lock:
            self.count += 1
            self.last = time.monotonic()
            if self.count == 1:
                self.first = self.last
        return "250 OK"


def fill(db_path: Path, url: str, secret_file: Path, events: int) -> None:
    """``events`` delivered-looking events and an outbox row each for the webhook of
    (url, secret_file), due now, as the store itself writes them."""
    now = time.time()
    database = Database(db_path)
    conn = database.open()
    endpoint = configured(
        WebhookSettings(url=url, secret_file=str(secret_file), allow_private=True), now
    )
    Outbox(conn).put(endpoint)
    conn.execute("PRAGMA synchronous=OFF")  # a bench fixture: the daemon uses FULL
    for start in range(0, events, BATCH):
        rows = []
        for i in range(start, min(events, start + BATCH)):
            qid = f"BACKLOG{i:08d}"
            event_id = "evt_" + uuid.uuid4().hex
            body = {
                "id": event_id,
                "type": "recipient.delivered",
                "timestamp": "2026-12-05T00:00:00.000Z",
                "data": {
                    "qid": qid,
                    "route": "smtp",
                    "recipient": f"user{i}@dest.test",
                    "reply": {"code": 250, "enhanced": "2.0.0", "text": "Ok: queued as X"},
                    "remote_mta": "mx1.dest.test",
                    "relay": "mx1.dest.test[192.0.2.1]:25",
                    "delay": 0.5,
                    "sequence": 2,
                },
            }
            rows.append((event_id, "recipient.delivered", qid, now, json.dumps(body)))
        conn.execute("BEGIN")
        cur = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events")
        first_seq = int(cur.fetchone()[0]) + 1
        conn.executemany(
            "INSERT INTO events (id, type, qid, ts, body) VALUES (?, ?, ?, ?, ?)", rows
        )
        conn.executemany(
            "INSERT INTO outbox (webhook, event, next_at) VALUES (?, ?, ?)",
            [(endpoint.id, seq, now) for seq in range(first_seq, first_seq + len(rows))],
        )
        conn.execute("COMMIT")
    conn.close()
    # Written with synchronous=OFF: flush it now, or the kernel's write-back of hundreds
    # of MB would compete with the spool's fsyncs during the measurement.
    for path in (db_path, db_path.parent):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def config(work: Path, port: int, sink: int, url: str | None, secret_file: Path) -> Path:
    lines = [
        "[server]",
        'hostname = "relay.bench"',
        f'listen = ["{LOOPBACK}:{port}"]',
        'local_socket = ""',
        "[relay]",
        'trusted_networks = ["127.0.0.0/8"]',
        "[spool]",
        f'dir = "{work / "spool"}"',
        "[events]",
        f'dir = "{work / "events"}"',
        "[log]",
        'level = "warning"',
        "[http]",
        f'listen = "{LOOPBACK}:{free_port()}"',
        "[delivery]",
        'mode = "smarthost"',
        "[delivery.smarthost]",
        f'hosts = ["{LOOPBACK}:{sink}"]',
        'tls = "none"',
    ]
    if url is not None:
        lines += [
            "[[webhooks]]",
            f'url = "{url}"',
            f'secret_file = "{secret_file}"',
            "allow_private = true",
        ]
    path = work / "smtprelay.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            kib = rss_kib(self.pid)
            if kib:
                self.samples.append(kib)
            self.halt.wait(0.2)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (less noisy than rates on a shared
    machine: what the daemon spent, not how long it waited for a core)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def outbox_rows(db_path: Path) -> int:
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def start(work: Path, cfg: Path) -> subprocess.Popen[bytes]:
    log = open(work / "smtprelay.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [str(ROOT / ".venv/bin/smtprelay"), "serve", "-c", str(cfg)],
            stdout=log,
            stderr=log,
            cwd=work,
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def mail(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """SMTP load against a daemon with no webhook, or a dead one with no backlog or
    ``--backlog`` events waiting."""
    sink = Sink()
    sink_port = free_port()
    controller = Controller(sink, hostname=LOOPBACK, port=sink_port)
    controller.start()
    with tempfile.TemporaryDirectory(prefix="smtprelay-bench-backlog-") as tmp:
        work = Path(tmp)
        secret_file = work / "whsec"
        secret_file.write_text(new_secret() + "\n")
        db_path = work / "events" / "events.db"
        url = None
        result: dict[str, float] = {}
        if mode != "none":
            url = f"http://{LOOPBACK}:{free_port()}/hook"  # nothing listens there
            began = time.monotonic()
            fill(db_path, url, secret_file, args.backlog if mode == "dead-backlog" else 0)
            result["fill_s"] = time.monotonic() - began
        port = free_port()
        proc = start(work, config(work, port, sink_port, url, secret_file))
        sampler = RssSampler(proc.pid)
        try:
            wait_port(port, proc, timeout=120)
            time.sleep(args.settle)  # the senders have tried and paused by now
            result["rss_ready_mib"] = rss_kib(proc.pid) / 1024
            sampler.start()
            cpu_before = cpu_s(proc.pid)
            elapsed = asyncio.run(load(port, args.messages, args.concurrency, args.size))
            result["accepted_per_s"] = args.messages / elapsed
            deadline = time.monotonic() + 300
            while sink.count < args.messages and time.monotonic() < deadline:
                time.sleep(0.1)
            result["delivered"] = sink.count
            span = sink.last - sink.first
            result["delivered_per_s"] = sink.count / span if span > 0 else 0.0
            # The main process (delivery, events, webhooks; SMTP sessions are in the
            # inbound worker): CPU per message from the first MAIL to the last delivery.
            result["cpu_ms_per_msg"] = 1000 * (cpu_s(proc.pid) - cpu_before) / args.messages
            time.sleep(args.settle)
            result["rss_end_mib"] = rss_kib(proc.pid) / 1024
        finally:
            sampler.halt.set()
            stop(proc)
            controller.stop()
        result["rss_peak_mib"] = max(sampler.samples, default=0) / 1024
        if db_path.exists():
            result["outbox_rows_left"] = outbox_rows(db_path)
    return result


def drain(args: argparse.Namespace) -> dict[str, float]:
    """``--drain`` events waiting for a live receiver: events/s until the outbox is empty."""
    receiver = Receiver(new_secret()).start()
    with tempfile.TemporaryDirectory(prefix="smtprelay-bench-drain-") as tmp:
        work = Path(tmp)
        secret_file = work / "whsec"
        secret_file.write_text(receiver.secret + "\n")
        db_path = work / "events" / "events.db"
        fill(db_path, receiver.url, secret_file, args.drain)
        port = free_port()
        proc = start(work, config(work, port, free_port(), receiver.url, secret_file))
        sampler = RssSampler(proc.pid)
        sampler.start()
        result: dict[str, float] = {}
        try:
            wait_port(port, proc, timeout=120)
            deadline = time.monotonic() + 900
            while len(receiver.deliveries) < args.drain and time.monotonic() < deadline:
                time.sleep(0.2)
            got = list(receiver.deliveries)
            result["events"] = len(got)
            if len(got) > 1:
                span = got[-1].at - got[0].at
                result["events_per_s"] = len(got) / span if span > 0 else 0.0
            result["bad_signatures"] = len(receiver.bad_signatures)
        finally:
            sampler.halt.set()
            stop(proc)
            receiver.stop()
        result["rss_peak_mib"] = max(sampler.samples, default=0) / 1024
    return result


def show(label: str, result: dict[str, Any]) -> None:
    print(f"{label:20s} " + " ".join(f"{k}={v:.1f}" for k, v in result.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    modes = ["none", "dead-empty", "dead-backlog"]
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for run in range(args.runs):
        for mode in modes[run % 3 :] + modes[: run % 3]:
            results[mode].append(mail(mode, args))
            show(f"run {run + 1} {mode}", results[mode][-1])
    for key in ("accepted_per_s", "delivered_per_s", "cpu_ms_per_msg", "rss_peak_mib"):
        medians = ", ".join(
            f"{mode} {statistics.median(r[key] for r in results[mode]):.1f}" for mode in modes
        )
        print(f"median {key}: {medians}", flush=True)
    if args.drain:
        show("drain", drain(args))
    print(f"load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
