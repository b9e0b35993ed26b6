#!/usr/bin/env python3
"""Scheduled sends cost no CPU while they wait: the daemon's CPU over an idle minute
with N messages whose ``send_at`` is a day ahead.

Fills a fresh spool with N messages (default 100,000; through smtprelay's own Spool,
fsync skipped during this set-up only, as bench/queue_scale.py does), each with
``send_at`` = now + 1 day, starts ``smtprelay serve`` (HTTP on, delivery to a closed
loopback port that is never reached), waits for READY=1 and --settle seconds, then
reports over --idle seconds: user+system CPU seconds of the daemon (main process and
inbound workers), its voluntary context switches (each wake-up of an idle process is
one), and what ``/status`` says the queue holds. Run it with --messages 0 for the
baseline of an empty queue. Loopback only; bounded by --messages and the two windows.
Usage:
    .venv/bin/python bench/scheduled_idle.py [--messages 100000] [--idle 60]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smtprelay import ids  # noqa: E402
from smtprelay.envelope import Client, Envelope, Recipient  # noqa: E402
from smtprelay.spool import Spool  # noqa: E402

BODY = b"Subject: scheduled\r\nFrom: app@example.com\r\n\r\n" + b"x" * 1900 + b"\r\n"
TOKEN = "scheduled-idle-bench-token"
READY_TIMEOUT = 1800.0
AHEAD = 86400.0


def fill(spool_dir: Path, count: int, send_at: float) -> float:
    started = time.monotonic()
    spool = Spool(spool_dir)
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # set-up only: durability of fixture files is irrelevant
    try:
        now = time.time()
        for n in range(count):
            envelope = Envelope(
                qid=ids.new_id(),
                sender="app@example.com",
                recipients=[Recipient(f"user{n % 50}@later.test")],
                client=Client("127.0.0.1", 40000, "bench"),
                arrival=now,
                size=len(BODY),
                next_attempt=now,
                send_at=send_at,
            )
            spool.commit(envelope, BODY)
    finally:
        os.fsync = real_fsync
        spool.close()
    return time.monotonic() - started


def family(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(c) for c in f.read().split())]
    except OSError:
        return [pid]


def cpu_and_switches(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and voluntary context switches of the daemon and its
    inbound workers, summed over every thread."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, switches = 0.0, 0
    for one in family(pid):
        try:
            with open(f"/proc/{one}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in os.listdir(f"/proc/{one}/task"):
                with open(f"/proc/{one}/task/{task}/status") as f:
                    switches += next(
                        int(line.split()[1])
                        for line in f
                        if line.startswith("voluntary_ctxt_switches:")
                    )
        except (OSError, StopIteration):
            continue
    return cpu, switches


def status(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", "/status", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET /status: {response.status} {body[:200]!r}")
    return json.loads(body)["queue"]  # type: ignore[no-any-return]


def drain(notify: socket.socket, ready: threading.Event) -> None:
    """Read every sd_notify datagram (a full socket would block the daemon)."""
    while True:
        try:
            datagram = notify.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return
        if b"READY=1" in datagram:
            ready.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--idle", type=float, default=60.0, help="measured window, s")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="after READY=1, before the window, s"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="smtprelay-scheduled-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        spool = work / "spool"
        print(f"filling {args.messages} scheduled messages into {spool} ...", flush=True)
        print(f"fill: {fill(spool, args.messages, time.time() + AHEAD):.1f} s", flush=True)
        config = work / "smtprelay.toml"
        tokens = work / "tokens"
        tokens.write_text(TOKEN + "\n")
        http_port = free_port()
        config.write_text(
            f'[server]\nhostname = "relay.bench"\nlisten = ["127.0.0.1:{free_port()}"]\n'
            f'[spool]\ndir = "{spool}"\n[log]\nlevel = "warning"\n'
            f'[http]\nlisten = "127.0.0.1:{http_port}"\ntokens_file = "{tokens}"\n'
            f'[delivery]\nmode = "smarthost"\n'
            f'[delivery.smarthost]\nhosts = ["127.0.0.1:{free_port()}"]\ntls = "none"\n'
        )
        notify_path = work / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(1.0)
            is_ready = threading.Event()
            threading.Thread(target=drain, args=(notify, is_ready), daemon=True).start()
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "smtprelay", "serve", "-c", str(config)],
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                stdout=subprocess.DEVNULL,
                stderr=open(work / "log", "wb"),  # noqa: SIM115
            )
            while not is_ready.wait(1.0):
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {proc.returncode}")
                if time.monotonic() - started > READY_TIMEOUT:
                    raise RuntimeError(f"no READY=1 within {READY_TIMEOUT:.0f} s")
            ready = time.monotonic() - started
            time.sleep(args.settle)
            before = status(http_port)
            cpu0, switches0 = cpu_and_switches(proc.pid)
            window = time.monotonic()
            time.sleep(args.idle)
            cpu1, switches1 = cpu_and_switches(proc.pid)
            elapsed = time.monotonic() - window
            after = status(http_port)
            print(f"messages scheduled:       {args.messages} (send_at = now + 1 day)")
            print(f"start to READY=1:         {ready:.1f} s")
            print(f"queue before the window:  {before}")
            print(f"queue after the window:   {after}")
            print(
                f"daemon CPU over {elapsed:.0f} s idle: {cpu1 - cpu0:.2f} s "
                f"({100 * (cpu1 - cpu0) / elapsed:.2f} % of one core)"
            )
            print(
                f"voluntary context switches in the window: {switches1 - switches0} "
                f"({(switches1 - switches0) / elapsed:.1f}/s, all threads)",
                flush=True,
            )
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
