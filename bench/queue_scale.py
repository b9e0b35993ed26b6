#!/usr/bin/env python3
"""Queue scale: start-up time and memory with a large queue for an unreachable destination.

Fills a fresh spool with N messages (default 100,000; written through smtprelay's own
Spool, with fsync skipped during this set-up only), all routed to a closed loopback port,
then starts `smtprelay serve` and reports:

* time from exec to READY=1 (sd_notify on our own NOTIFY_SOCKET): recovery scans the
  whole spool before the listeners open;
* resident memory (VmRSS, main process and inbound workers together) when ready, and
  its peak (VmHWM) over the observation window
  while the scheduler works through the queue (every message is attempted, the
  destination is marked dead, and each message is deferred and rewritten);
* how many messages were deferred (rescheduled) during the window.

Loopback only; bounded by --messages and --observe seconds. Usage:
    .venv/bin/python bench/queue_scale.py [--messages 100000] [--observe 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smtprelay import ids  # noqa: E402
from smtprelay.envelope import Client, Envelope, Recipient  # noqa: E402
from smtprelay.spool import Spool  # noqa: E402

BODY = b"Subject: queued\r\nFrom: app@example.com\r\n\r\n" + b"x" * 1900 + b"\r\n"


def fill(spool_dir: Path, count: int) -> float:
    started = time.monotonic()
    spool = Spool(spool_dir)
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # set-up only: durability of fixture files is irrelevant
    try:
        now = time.time()
        for n in range(count):
            qid = ids.new_id()
            envelope = Envelope(
                qid=qid, sender="app@example.com",
                recipients=[Recipient(f"user{n % 50}@unreachable.test")],
                client=Client("127.0.0.1", 40000, "bench"), arrival=now, size=len(BODY),
                next_attempt=now,
            )
            spool.commit(envelope, BODY)
    finally:
        os.fsync = real_fsync
        spool.close()
    return time.monotonic() - started


def rss_kb(pid: int, field: str) -> int:
    """``field`` of the daemon and its inbound workers together (a sum of peaks, for
    VmHWM: never less than the real peak)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [pid, *(int(c) for c in f.read().split())]
    except OSError:
        pids = [pid]
    total = 0
    for one in pids:
        try:
            with open(f"/proc/{one}/status") as f:
                total += next((int(line.split()[1]) for line in f
                               if line.startswith(field + ":")), 0)
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--observe", type=float, default=30.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="smtprelay-scale-"))
    try:
        spool = work / "spool"
        print(f"filling {args.messages} messages into {spool} ...", flush=True)
        print(f"fill: {fill(spool, args.messages):.1f} s", flush=True)
        config = work / "smtprelay.toml"
        config.write_text(
            f'[server]\nhostname = "relay.bench"\nlisten = ["127.0.0.1:{free_port()}"]\n'
            f'[spool]\ndir = "{spool}"\n[log]\nlevel = "warning"\n'
            f'[delivery]\nmode = "smarthost"\n'
            f'[delivery.smarthost]\nhosts = ["127.0.0.1:{free_port()}"]\ntls = "none"\n'
        )
        notify_path = work / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(120)
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "smtprelay", "serve", "-c", str(config)],
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"),  # noqa: SIM115
            )
            try:
                while b"READY=1" not in notify.recv(4096):
                    pass
                ready = time.monotonic() - started
                rss_ready = rss_kb(proc.pid, "VmRSS")
                deadline = time.monotonic() + args.observe
                peak = 0
                while time.monotonic() < deadline and proc.poll() is None:
                    peak = max(peak, rss_kb(proc.pid, "VmHWM"))
                    time.sleep(0.5)
                rss_end = rss_kb(proc.pid, "VmRSS")
                deferred = sum(
                    1 for p in (spool / "queue").glob("*.msg")
                    if b'"deferred"' in p.open("rb").readline()
                )
            finally:
                proc.terminate()
                proc.wait(30)
        print(f"messages queued:          {args.messages}")
        print(f"start to READY=1:         {ready:.2f} s   (target < 10 s)")
        print(f"RSS when ready:           {rss_ready / 1024:.0f} MB   (main + inbound workers)")
        print(f"RSS peak over {args.observe:.0f} s:       {peak / 1024:.0f} MB   (target < 300 MB)")
        print(f"RSS at the end:           {rss_end / 1024:.0f} MB")
        print(f"deferred in the window:   {deferred}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
