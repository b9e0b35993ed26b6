"""kill -9 under load: every message that got a 250 is in the spool, intact, exactly once."""

from __future__ import annotations

import hashlib
import re
import smtplib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.inbound_support import line, qid_of

CLIENTS = 16
MESSAGES = 2000
KILL_AFTER = 800  # acknowledgements before the kill


def body(n: int) -> bytes:
    filler = hashlib.sha256(str(n).encode()).hexdigest() * (1 + n % 40)
    return (
        f"From: load@example.com\r\nTo: sink@example.net\r\nSubject: crash {n}\r\n"
        f"X-Seq: {n}\r\n\r\n{filler}\r\nend of message {n}\r\n"
    ).encode()


class Sender:
    """16 threads sharing a work list; records which message got which queue ID."""

    def __init__(self, port: int, todo: list[int]) -> None:
        self.port = port
        self.todo = todo
        self.lock = threading.Lock()
        self.acked: dict[int, str] = {}
        self.in_flight: set[int] = set()
        self.stop_after: int | None = None
        self.enough = threading.Event()

    def next(self) -> int | None:
        with self.lock:
            if not self.todo or self.enough.is_set():
                return None
            n = self.todo.pop()
            self.in_flight.add(n)
            return n

    def worker(self) -> None:
        try:
            with smtplib.SMTP(LOOPBACK, self.port, timeout=30) as client:
                client.ehlo("load.test")
                while (n := self.next()) is not None:
                    client.mail("load@example.com")
                    client.rcpt("sink@example.net")
                    code, reply = client.data(body(n))
                    assert code == 250, reply
                    qid = qid_of(line(code, reply))
                    with self.lock:
                        self.acked[n] = qid
                        self.in_flight.discard(n)
                        if self.stop_after and len(self.acked) >= self.stop_after:
                            self.enough.set()
        except (OSError, smtplib.SMTPException):
            pass  # the daemon was killed under us: this connection is over

    def run(self, on_progress: Callable[[], None] | None = None) -> None:
        threads = [threading.Thread(target=self.worker) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        if on_progress:
            on_progress()
        for t in threads:
            t.join(120)
            assert not t.is_alive()


@pytest.mark.slow
def test_kill_9_under_load_loses_nothing_acknowledged(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(overrides={"log": {"level": "warning"}})
    sender = Sender(daemon.port, list(range(MESSAGES)))

    def killer() -> None:
        # Kill while the 16 clients are mid-flight, from this thread, as soon as enough
        # messages were acknowledged; the clients keep sending until the socket dies.
        while len(sender.acked) < KILL_AFTER:
            if not any(t.is_alive() for t in threading.enumerate()[1:]):
                break
            threading.Event().wait(0.002)
        daemon.kill()

    sender.run(on_progress=killer)
    first_phase = dict(sender.acked)
    in_flight_at_kill = set(sender.in_flight)
    assert KILL_AFTER <= len(first_phase) < MESSAGES, "the kill must land mid-load"

    # Restart: recovery runs over whatever the crash left; then send the rest.
    daemon.start()
    leftovers = [n for n in range(MESSAGES) if n not in first_phase]
    second = Sender(daemon.port, leftovers)
    second.run()
    assert len(first_phase) + len(second.acked) == MESSAGES
    daemon.stop()

    queue = daemon.spool / "queue"
    assert not list(queue.glob("*.tmp")), "no temp file may survive recovery"
    assert not list((daemon.spool / "corrupt").iterdir())
    stored: dict[str, bytes] = {qid: daemon.message(qid) for qid in daemon.queued_ids()}
    seq_of: dict[str, int] = {}
    for qid, data in stored.items():
        match = re.search(rb"\r\nX-Seq: (\d+)\r\n", data)
        assert match, f"{qid} is not one of ours"
        n = int(match.group(1))
        # Intact: the stored message is exactly what was sent, after the trace headers.
        assert data.endswith(body(n)), f"{qid} differs from message {n}"
        assert daemon.envelope(qid)["size"] == len(data)
        seq_of[qid] = n

    for phase in (first_phase, second.acked):
        for n, qid in phase.items():
            assert seq_of.get(qid) == n, f"acknowledged {qid} (message {n}) is missing"
    # Exactly once: a message may be stored twice only if its first attempt was in
    # flight when the daemon died (its 250 never arrived, so the client sent it again).
    counts: dict[int, int] = {}
    for n in seq_of.values():
        counts[n] = counts.get(n, 0) + 1
    duplicates = {n for n, c in counts.items() if c > 1}
    assert duplicates <= in_flight_at_kill
    assert set(counts) == set(range(MESSAGES))


@pytest.mark.slow
def test_restart_recovers_partial_files(make_daemon: Callable[..., Daemon]) -> None:
    """Leftovers of an interrupted commit are cleaned up; a good message stays queued."""
    daemon = make_daemon()
    with smtplib.SMTP(LOOPBACK, daemon.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], body(1))
    (good,) = daemon.queued_ids()
    daemon.kill()
    queue: Path = daemon.spool / "queue"
    (queue / "1K17TWEWEZ4Y2.msg.tmp").write_bytes(b"half a mess")
    (queue / "1K17TWEWEZ4Y4.msg").write_bytes(b'{"version": 1, "qid": "1K17T')
    truncated = daemon.message_file(good).read_bytes()[:-10]
    (queue / "1K17TWEWEZ4Y5.msg").write_bytes(truncated.replace(good.encode(), b"1K17TWEWEZ4Y5"))
    daemon.start()
    daemon.stop()
    assert daemon.queued_ids() == [good]
    assert sorted(p.name for p in queue.iterdir()) == [f"{good}.msg"]
    assert sorted(p.name for p in (daemon.spool / "corrupt").iterdir()) == [
        "1K17TWEWEZ4Y4.msg",
        "1K17TWEWEZ4Y5.msg",
    ]
    assert "1K17TWEWEZ4Y5: spool file quarantined to corrupt/: message data is" in daemon.log()
    assert "1K17TWEWEZ4Y4: spool file quarantined to corrupt/: unreadable" in daemon.log()


@pytest.mark.slow
def test_sigterm_under_load_exits_0_and_keeps_every_acknowledged_message(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A clean stop during a load of 16 senders: sessions get their replies or a 421,
    the daemon exits 0, and every message that got a 250 is in the spool, intact."""
    daemon = make_daemon(overrides={"log": {"level": "warning"}})
    sender = Sender(daemon.port, list(range(600)))
    stopped: dict[str, int] = {}

    def stopper() -> None:
        while len(sender.acked) < 200:
            if not any(t.is_alive() for t in threading.enumerate()[1:]):
                break
            threading.Event().wait(0.002)
        stopped["code"] = daemon.stop()

    sender.run(on_progress=stopper)
    assert stopped["code"] == 0
    assert 200 <= len(sender.acked) < 600, "the stop must land mid-load"
    assert not list((daemon.spool / "queue").glob("*.tmp"))
    queued = set(daemon.queued_ids())
    for n, qid in sender.acked.items():
        assert qid in queued, f"acknowledged {qid} (message {n}) is missing after the stop"
        assert daemon.message(qid).endswith(body(n))
