#!/usr/bin/env python3
"""Queue scale: start-up time and memory with a large queue for an unreachable destination.

Fills a fresh spool with N messages (default 100,000; written through smtprelay's own
Spool, with fsync skipped during this set-up only), all routed to a closed loopback port,
then starts `smtprelay serve` and reports:

* time from exec to READY=1 (sd_notify on our own NOTIFY_SOCKET): the spool's names
  are scanned and partial writes removed before it; the envelopes are read after it,
  while the daemon serves (``/status`` ``queue.loading`` counts those not read yet);
* time from exec until that load is done (``loading`` 0): the window below lasts at
  least --observe seconds and until then (at most --load-timeout seconds after READY=1);
* resident memory (VmRSS, main process and its children -- inbound workers, HTTP
  front -- together) when ready, and its peak (VmHWM) over the observation window
  while the scheduler works through the queue (every message is attempted, the
  destination is marked dead, and each message is deferred and rewritten);
* how many messages are deferred at the end of the window, and how many the start-up
  load has not read yet (the daemon's /status);
* with the queue full: ``/status`` and ``/metrics`` latency (median and worst of
  --requests each, right after READY) and, polled every 0.5 s through the window
  while the scheduler works, the worst ``/healthz`` and ``/metrics`` latency and the
  worst event-loop lag the daemon itself reported (``/status`` ``event_loop_lag_s``),
  each with the time it was seen, the 99th percentile and how many samples missed the
  100 ms target; and for each sample that missed it, where the time went
  (:class:`Clocks`): the machine's steal time (the hypervisor ran something else), the
  daemon's loop thread running, or waiting for a core, and the client waiting for one --
  what is left is the loop thread off the CPU without waiting for a core (the GIL, a
  lock, I/O);
* the time from SIGTERM to exit (killed, and said so, after --stop-timeout).

Delay warnings are off by default (``--delay-warning 0``): a spool kept with --reuse
ages between runs, and once its messages are older than ``[bounce] delay_warning``
(4 h by default) every first deferral also spools a notice to the sender -- a second
queue growing beside the first, so runs on the same spool would not compare.
``--delay-warning 4h`` on a spool older than that measures the outage that lasted
longer than the warning time.

The figures are printed before the daemon is stopped, so a slow stop never hides them.
Loopback only; bounded by --messages, --requests and --observe seconds. Usage:
    .venv/bin/python bench/queue_scale.py [--messages 100000] [--observe 30] [--reuse DIR]
(--reuse DIR: fill once, keep it in DIR, hard-link it into each run's fresh spool.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
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
                qid=qid,
                sender="app@example.com",
                recipients=[Recipient(f"user{n % 50}@unreachable.test")],
                client=Client("127.0.0.1", 40000, "bench"),
                arrival=now,
                size=len(BODY),
                next_attempt=now,
            )
            spool.commit(envelope, BODY)
    finally:
        os.fsync = real_fsync
        spool.close()
    return time.monotonic() - started


def reuse(keep: Path, spool: Path, count: int) -> None:
    """A spool filled once in ``keep`` (filled there first if it is not), hard-linked
    into ``spool``: the daemon never writes a file in place (a rewrite is a new file
    renamed over the old name, a removal an unlink), so the kept copy stays as filled."""
    kept = keep / f"spool-{count}"
    if not (kept / "filled").exists():
        shutil.rmtree(kept, ignore_errors=True)
        print(f"filling {count} messages into {kept} (kept for --reuse) ...", flush=True)
        print(f"fill: {fill(kept, count):.1f} s", flush=True)
        (kept / "filled").touch()
    started = time.monotonic()
    subprocess.run(["cp", "-al", str(kept), str(spool)], check=True)
    (spool / "filled").unlink()
    print(f"linked {count} messages from {kept}: {time.monotonic() - started:.1f} s", flush=True)


def rss_parts_kb(pid: int, field: str) -> list[int]:
    """``field`` of the daemon, then of each of its children (inbound workers, HTTP
    front), in KB."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [pid, *(int(c) for c in f.read().split())]
    except OSError:
        pids = [pid]
    parts = []
    for one in pids:
        try:
            with open(f"/proc/{one}/status") as f:
                parts.append(
                    next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
                )
        except OSError:
            continue
    return parts


def rss_kb(pid: int, field: str) -> int:
    """``field`` of the daemon and its children together (a sum of peaks, for VmHWM:
    never less than the real peak)."""
    return sum(rss_parts_kb(pid, field))


TOKEN = "queue-scale-bench-token"
LATENCY_TARGET = 0.1  # seconds: /healthz, /metrics and the loop's lag, throughout
READY_TIMEOUT = 900.0


def get(port: int, path: str, timeout: float = 120.0) -> tuple[float, bytes]:
    """Seconds one GET took (a new connection each, as a scraper makes) and its body."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    finally:
        conn.close()
    return time.monotonic() - started, body


USER_HZ = os.sysconf("SC_CLK_TCK")


class Clocks:
    """Counters read before and after a sample, to say where a slow one's time went:
    the machine's steal time (``/proc/stat``, all CPUs, in USER_HZ ticks), and from
    ``schedstat`` (ns) the daemon's main thread -- its event loop -- running and waiting
    in a run queue, and this script's own thread waiting in one."""

    def __init__(self, daemon: int) -> None:
        with open("/proc/stat") as f:
            self.steal = int(f.readline().split()[8]) / USER_HZ
        self.loop_ran, self.loop_waited = self._schedstat(f"/proc/{daemon}/task/{daemon}")
        self.client_waited = self._schedstat(f"/proc/self/task/{threading.get_native_id()}")[1]

    @staticmethod
    def _schedstat(task: str) -> tuple[float, float]:
        try:
            with open(f"{task}/schedstat") as f:
                ran, waited, _ = f.read().split()
        except (OSError, ValueError):
            return 0.0, 0.0
        return int(ran) / 1e9, int(waited) / 1e9

    def since(self, before: Clocks) -> str:
        return (
            f"steal {ms(self.steal - before.steal)}, loop ran {ms(self.loop_ran - before.loop_ran)}"
            f" and waited for a core {ms(self.loop_waited - before.loop_waited)}, "
            f"client waited {ms(self.client_waited - before.client_waited)}"
        )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def drain(notify: socket.socket, ready: threading.Event) -> None:
    """Read every datagram the daemon sends (READY=1, then a STATUS= heartbeat every 5 s)
    until the socket is closed. A manager that stops reading fills the socket's queue
    (net.unix.max_dgram_qlen, often 10 datagrams: under a minute of heartbeats), and the
    daemon's next sd_notify then blocks -- its stop hung that way here, so this bench
    once never printed its figures."""
    while True:
        try:
            datagram = notify.recv(4096)
        except TimeoutError:
            continue
        except OSError:  # closed: the bench is done
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
    parser.add_argument("--observe", type=float, default=30.0)
    parser.add_argument(
        "--requests",
        type=int,
        default=20,
        help="/status and /metrics requests each right after READY",
    )
    parser.add_argument("--stop-timeout", type=float, default=120.0)
    parser.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="fill the spool once in DIR and hard-link it for each run",
    )
    parser.add_argument(
        "--load-timeout",
        type=float,
        default=600.0,
        help="longest the window waits for the queue to be loaded",
    )
    parser.add_argument(
        "--delay-warning",
        default="0",
        help='[bounce] delay_warning of the run (default "0": none; see the docstring)',
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="smtprelay-scale-"))
    try:
        spool = work / "spool"
        if args.reuse is not None:
            reuse(args.reuse, spool, args.messages)
        else:
            print(f"filling {args.messages} messages into {spool} ...", flush=True)
            print(f"fill: {fill(spool, args.messages):.1f} s", flush=True)
        config = work / "smtprelay.toml"
        tokens = work / "tokens"
        tokens.write_text(TOKEN + "\n")
        http_port = free_port()
        config.write_text(
            f'[server]\nhostname = "relay.bench"\nlisten = ["127.0.0.1:{free_port()}"]\n'
            f'[spool]\ndir = "{spool}"\n[log]\nlevel = "warning"\n'
            f'[http]\nlisten = "127.0.0.1:{http_port}"\ntokens_file = "{tokens}"\n'
            f'[bounce]\ndelay_warning = "{args.delay_warning}"\n'
            f'[delivery]\nmode = "smarthost"\n'
            f'[delivery.smarthost]\nhosts = ["127.0.0.1:{free_port()}"]\ntls = "none"\n'
        )
        notify_path = work / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(1.0)
            is_ready = threading.Event()
            reader = threading.Thread(target=drain, args=(notify, is_ready), daemon=True)
            reader.start()
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "smtprelay", "serve", "-c", str(config)],
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                stdout=subprocess.DEVNULL,
                stderr=open(work / "log", "wb"),  # noqa: SIM115
            )
            try:
                while not is_ready.wait(1.0):
                    if proc.poll() is not None:
                        said = (work / "log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"the daemon exited with {proc.returncode}:\n{said}")
                    if time.monotonic() - started > READY_TIMEOUT:
                        raise RuntimeError(f"no READY=1 within {READY_TIMEOUT:.0f} s")
                ready = time.monotonic() - started
                rss_ready = rss_kb(proc.pid, "VmRSS")
                status_times, metrics_times = [], []
                for _ in range(args.requests):
                    took, body = get(http_port, "/status")
                    status_times.append(took)
                    metrics_times.append(get(http_port, "/metrics")[0])
                shown = json.loads(body)["queue"]
                loading = json.loads(body)["queue"].get("loading", 0)
                loaded = None if loading else time.monotonic() - started
                deadline = time.monotonic() + args.observe
                peak = 0
                # Every sample, (seconds since start, value), for the worst and how
                # many missed the target.
                samples: dict[str, list[tuple[float, float]]] = {
                    "/healthz": [],
                    "/metrics": [],
                    "event-loop lag": [],
                }
                # Each sample over the target: (name, seconds since start, value, and
                # the clocks over it: the request's; for the lag, since the last poll).
                slow: list[tuple[str, float, float, str]] = []
                polled = Clocks(proc.pid)
                load_deadline = time.monotonic() + args.load_timeout
                while (
                    time.monotonic() < deadline
                    or (loaded is None and time.monotonic() < load_deadline)
                ) and proc.poll() is None:
                    peak = max(peak, rss_kb(proc.pid, "VmHWM"))
                    for path in ("/healthz", "/metrics"):
                        before = Clocks(proc.pid)
                        took = get(http_port, path)[0]
                        samples[path].append((time.monotonic() - started, took))
                        if took >= LATENCY_TARGET:
                            spent = Clocks(proc.pid).since(before)
                            slow.append((path, time.monotonic() - started, took, spent))
                    now = json.loads(get(http_port, "/status")[1])
                    lag = now["event_loop_lag_s"]
                    samples["event-loop lag"].append((time.monotonic() - started, lag))
                    clocks = Clocks(proc.pid)
                    if lag >= LATENCY_TARGET:
                        lagged = ("event-loop lag", time.monotonic() - started, lag)
                        slow.append((*lagged, clocks.since(polled)))
                    polled = clocks
                    if loaded is None and not now["queue"].get("loading", 0):
                        loaded = time.monotonic() - started
                    time.sleep(0.5)
                window = time.monotonic() - deadline + args.observe
                rss_end = rss_kb(proc.pid, "VmRSS")
                peaks = rss_parts_kb(proc.pid, "VmHWM")
                # The daemon's own count: a scan of a million files here took longer
                # than the window, with the daemon still running beside it.
                queue_end = json.loads(get(http_port, "/status")[1])["queue"]
                print(f"messages queued:          {args.messages}")
                print(f"start to READY=1:         {ready:.2f} s   (target < 60 s)")
                print(
                    "start to queue loaded:    "
                    + (f"{loaded:.2f} s" if loaded is not None else "not within the window")
                )
                print(
                    f"RSS when ready:           {rss_ready / 1024:.0f} MB   "
                    "(main + inbound workers + HTTP front)"
                )
                print(
                    f"/status with queue full:  median {ms(statistics.median(status_times))}, "
                    f"worst {ms(max(status_times))} of {args.requests}; it said "
                    f"total={shown['total']} active={shown['active']} "
                    f"deferred={shown['deferred']} loading={shown.get('loading', 0)}"
                )
                print(
                    f"/metrics with queue full: median {ms(statistics.median(metrics_times))}, "
                    f"worst {ms(max(metrics_times))} of {args.requests}"
                )
                print(
                    f"RSS peak over {window:.0f} s:       {peak / 1024:.0f} MB   (target < 500 MB)"
                )
                print(f"RSS at the end:           {rss_end / 1024:.0f} MB")
                print(
                    "peak of each process:     "
                    + " + ".join(f"{kb / 1024:.0f}" for kb in peaks)
                    + " MB (main, then its children)"
                )
                for name, seen in samples.items():
                    if not seen:
                        continue
                    at, value = max(seen, key=lambda sample: sample[1])
                    over = sum(1 for _, v in seen if v >= LATENCY_TARGET)
                    print(
                        f"{name + ' worst:':<26}{ms(value)} at {at:.0f} s; p99 "
                        f"{ms(sorted(v for _, v in seen)[int(0.99 * (len(seen) - 1))])}; "
                        f"{over} of {len(seen)} samples >= {ms(LATENCY_TARGET)} (target: none)"
                    )
                for name, at, value, spent in slow:
                    print(f"  {name} {ms(value)} at {at:.0f} s: {spent}")
                print(
                    f"at the end of the window: {queue_end['deferred']} deferred, "
                    f"{queue_end.get('loading', 0)} not loaded yet",
                    flush=True,
                )
            finally:
                stopping = time.monotonic()
                proc.terminate()
                try:
                    proc.wait(args.stop_timeout)
                    print(
                        f"SIGTERM to exit:          {time.monotonic() - stopping:.2f} s "
                        f"(exit code {proc.returncode})"
                    )
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    print(
                        f"SIGTERM to exit:          did not exit within "
                        f"{args.stop_timeout:.0f} s; killed"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
