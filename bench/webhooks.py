"""Cost of delivery events and webhooks (issue 13): SMTP accept rate with one webhook
endpoint receiving every event versus none, in the same invocation, and the webhook
delivery rate to a local receiver.

    .venv/bin/python bench/webhooks.py                      # 3 runs x 3000 messages
    .venv/bin/python bench/webhooks.py --runs 1 --messages 1000   # a smoke run

Everything is on 127.0.0.1 and bounded in count and time: a fresh smtprelay per
(run, mode) delivering to an aiosmtpd counting sink, C concurrent aiosmtplib clients
(each reusing one connection) sending N messages of SIZE bytes, an aiohttp receiver
that verifies every signature with the ``standardwebhooks`` library (as a real one
would; it shares the machine's CPUs with the relay). Modes alternate from run to run.
Reported per mode: accepted/s (N over the time from the first MAIL to the last 250),
and with the webhook: events received, events/s at the receiver (first to last), and
how long after the last 250 the last event arrived. smtprelay is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiosmtplib
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smtprelay.events.webhooks import new_secret  # noqa: E402
from tests.integration.webhook_receiver import Receiver  # noqa: E402

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self.lock:
            self.count += 1
        return "250 OK"


def config(work: Path, port: int, sink: int, webhook: Receiver | None) -> Path:
    lines = [
        "[server]",
        'hostname = "relay.bench"',
        f'listen = ["{LOOPBACK}:{port}"]',
        'local_socket = ""',
        "[relay]",
        'trusted_networks = ["127.0.0.0/8"]',
        "[spool]",
        f'dir = "{work / "spool"}"',
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
    if webhook is not None:
        secret_file = work / "whsec"
        secret_file.write_text(webhook.secret + "\n")
        lines += [
            "[[webhooks]]",
            f'url = "{webhook.url}"',
            f'secret_file = "{secret_file}"',
            "allow_private = true",
        ]
    path = work / "smtprelay.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def load(port: int, messages: int, concurrency: int, size: int) -> float:
    body = (
        "Subject: bench\r\nFrom: a@bench.test\r\nTo: b@dest.test\r\n\r\n" + "x" * 70 + "\r\n"
    ) * max(1, size // 72)
    left = list(range(messages))

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname=LOOPBACK, port=port, timeout=30, start_tls=False)
        await smtp.connect()
        try:
            while left:
                left.pop()
                await smtp.sendmail("a@bench.test", ["b@dest.test"], body)
        finally:
            await smtp.quit()

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.monotonic() - start


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("smtprelay exited")
        try:
            socket.create_connection((LOOPBACK, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("smtprelay did not start")


def one(mode: str, args: argparse.Namespace) -> dict[str, float]:
    counter = Counter()
    sink_port = free_port()
    sink = Controller(counter, hostname=LOOPBACK, port=sink_port)
    sink.start()
    receiver = Receiver(new_secret()).start() if mode == "webhook" else None
    with tempfile.TemporaryDirectory(prefix="smtprelay-bench-wh-") as tmp:
        work = Path(tmp)
        port = free_port()
        cfg = config(work, port, sink_port, receiver)
        log = open(work / "smtprelay.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/smtprelay"), "serve", "-c", str(cfg)],
            stdout=log,
            stderr=log,
            cwd=work,
        )
        try:
            wait_port(port, proc)
            elapsed = asyncio.run(load(port, args.messages, args.concurrency, args.size))
            done = time.monotonic()
            result = {"accepted_per_s": args.messages / elapsed}
            deadline = time.monotonic() + 120
            while counter.count < args.messages and time.monotonic() < deadline:
                time.sleep(0.1)
            result["delivered"] = counter.count
            if receiver is not None:
                want = 2 * args.messages  # message.received + recipient.delivered
                deadline = time.monotonic() + 300
                while len(receiver.deliveries) < want and time.monotonic() < deadline:
                    time.sleep(0.1)
                got = list(receiver.deliveries)
                result["events"] = len(got)
                if len(got) > 1:
                    span = got[-1].at - got[0].at
                    result["events_per_s"] = len(got) / span if span > 0 else 0.0
                    result["last_event_after_last_250_s"] = got[-1].at - done
                result["bad_signatures"] = len(receiver.bad_signatures)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
            sink.stop()
            if receiver is not None:
                receiver.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"none": [], "webhook": []}
    for run in range(args.runs):
        for mode in ("none", "webhook") if run % 2 == 0 else ("webhook", "none"):
            r = one(mode, args)
            results[mode].append(r)
            print(
                f"run {run + 1} {mode:8s} " + " ".join(f"{k}={v:.1f}" for k, v in r.items()),
                flush=True,
            )
    none = statistics.median(r["accepted_per_s"] for r in results["none"])
    hook = statistics.median(r["accepted_per_s"] for r in results["webhook"])
    print(
        f"median accepted/s: none {none:.0f}, webhook {hook:.0f}, "
        f"cost {100 * (1 - hook / none):.1f} % (target < 10 %)"
    )
    rates = [r["events_per_s"] for r in results["webhook"] if "events_per_s" in r]
    if rates:
        print(f"median webhook events/s to the local receiver: {statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
