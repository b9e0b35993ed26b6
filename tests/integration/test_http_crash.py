"""A crash and the Idempotency-Key: ``kill -9`` under a load of keyed submissions, then
every request retried with its key -- every acknowledged one replays its first answer,
and the sink receives each message exactly once. And the crash window itself (between
the messages' fsync and the commit of their record), made on purpose: the retry replays
when every message was durable, and sends once when only part of a batch was.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtprelay.web.idempotency import file_name
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.delivery_support import MX1
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

TOKEN = "crash-token-6d02be9f41"
CLIENTS = 8
REQUESTS = 240
KILL_AFTER = 80  # acknowledged requests before the kill
BATCH_EVERY = 4  # every 4th request is a batch of BATCH_SIZE messages
BATCH_SIZE = 3


def request_of(n: int) -> tuple[str, dict[str, Any]]:
    """Request ``n``: its path and body; every message carries X-Seq ``n.i``."""

    def message(i: int) -> dict[str, Any]:
        return {
            "from": "app@sender.test",
            "to": [f"user{n % 5}@dest.test"],
            "subject": f"crash {n}.{i}",
            "text": f"message {n}.{i}\n" + "x" * (200 + n % 50),
            "headers": {"X-Seq": f"{n}.{i}"},
        }

    if n % BATCH_EVERY == 0:
        return "/v1/messages/batch", {"messages": [message(i) for i in range(BATCH_SIZE)]}
    return "/v1/messages", message(0)


def seqs_of(n: int) -> list[str]:
    return [f"{n}.{i}" for i in range(BATCH_SIZE if n % BATCH_EVERY == 0 else 1)]


class Poster:
    """One keep-alive HTTP connection: POST with an Idempotency-Key."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)

    def post(self, n: int) -> tuple[int, dict[str, str], Any]:
        path, body = request_of(n)
        self.conn.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
                "Idempotency-Key": f"request-{n}",
            },
        )
        response = self.conn.getresponse()
        payload = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, json.loads(payload)

    def close(self) -> None:
        self.conn.close()


class Load:
    """CLIENTS threads sharing the request numbers; records each first answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.todo = list(range(REQUESTS))
        self.lock = threading.Lock()
        self.acked: dict[int, Any] = {}
        self.enough = threading.Event()

    def next(self) -> int | None:
        with self.lock:
            if not self.todo or self.enough.is_set():
                return None
            return self.todo.pop()

    def worker(self) -> None:
        poster = Poster(self.port)
        try:
            while (n := self.next()) is not None:
                status, _, answer = poster.post(n)
                assert status == 202, answer
                with self.lock:
                    self.acked[n] = answer
        except (OSError, http.client.HTTPException, ValueError):
            pass  # killed under us: this connection is over
        finally:
            poster.close()

    def run(self, kill: Callable[[], None]) -> None:
        threads = [threading.Thread(target=self.worker) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        wait_until(lambda: len(self.acked) >= KILL_AFTER, timeout=120)
        kill()
        for t in threads:
            t.join(60)
            assert not t.is_alive()


@pytest.fixture
def relay(dns: TestDNSServer, delivering_relay: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"crash {TOKEN} scopes=send\n")
    return delivering_relay(
        http={"listen": f"{LOOPBACK}:{free_port()}", "tokens_file": str(tokens)},
        log={"level": "warning"},
    )


def port_of(daemon: Daemon) -> int:
    return int(daemon.sections["http"]["listen"].rsplit(":", 1)[1])


def seqs_at(sink: Sink) -> Counter[str]:
    found: Counter[str] = Counter()
    for m in sink.messages:
        parsed = email.message_from_bytes(m.content, policy=email.policy.default)
        found[str(parsed["X-Seq"])] += len(m.rcpt_tos)
    return found


@pytest.mark.slow
def test_kill_9_under_keyed_load_then_every_retry_replays_and_nothing_is_sent_twice(
    relay: Daemon, make_sink: Callable[..., Sink]
) -> None:
    # No sink yet: nothing is delivered before the kill, so no delivery can be in flight
    # (the one duplicate a crash may cause), and every message counts at the sink once.
    load = Load(port_of(relay))
    load.run(relay.kill)
    first = dict(load.acked)
    assert KILL_AFTER <= len(first) < REQUESTS, "the kill must land mid-load"
    sink = make_sink(MX1, name="mx1.dest.test")
    relay.start()
    poster = Poster(port_of(relay))
    try:
        for n in range(REQUESTS):
            status, headers, answer = poster.post(n)
            assert status == 202, (n, answer)
            if n in first:
                assert answer == first[n], n
                assert headers["idempotent-replayed"] == "true"
            status, headers, again = poster.post(n)  # and once more: replayed now
            assert (status, again, headers["idempotent-replayed"]) == (202, answer, "true")
    finally:
        poster.close()
    every = [s for n in range(REQUESTS) for s in seqs_of(n)]
    wait_until(lambda: sum(seqs_at(sink).values()) >= len(every), timeout=120)
    wait_until(lambda: relay.queued_ids() == [], timeout=30)
    assert seqs_at(sink) == Counter(every)  # each message once, none lost
    assert "Traceback" not in relay.log()


def post_once(daemon: Daemon, n: int) -> tuple[int, dict[str, str], Any]:
    poster = Poster(port_of(daemon))
    try:
        return poster.post(n)
    finally:
        poster.close()


def queue_one(daemon: Daemon, n: int) -> Any:
    status, _, answer = post_once(daemon, n)
    assert status == 202, answer
    return answer


def crash_before_the_commit_point(daemon: Daemon, n: int) -> Path:
    """As if ``kill -9`` had struck after the fsyncs, before the rename of request
    ``n``'s record: the record goes back to pending."""
    daemon.kill()
    record = daemon.spool / "idempotency" / file_name(f"crash:request-{n}")
    pending = record.with_suffix(".pending")
    record.rename(pending)
    return pending


@pytest.mark.slow
def test_the_crash_window_replays_a_finished_commit_and_takes_back_a_partial_one(
    relay: Daemon, make_sink: Callable[..., Sink]
) -> None:
    single = queue_one(relay, 1)  # one message
    pending = crash_before_the_commit_point(relay, 1)
    relay.start()
    assert not pending.exists()
    status, headers, answer = post_once(relay, 1)
    assert (status, answer, headers["idempotent-replayed"]) == (202, single, "true")
    assert relay.queued_ids() == [single["id"]]
    relay.stop()
    # A batch of three, one of which never reached the disk: nothing was acknowledged.
    relay.start()
    batch = queue_one(relay, 4)
    ids = [m["id"] for m in batch["messages"]]
    crash_before_the_commit_point(relay, 4)
    relay.message_file(ids[1]).unlink()
    sink = make_sink(MX1, name="mx1.dest.test")
    relay.start()
    assert f"{ids[0]}, {ids[2]}: removed, never acknowledged" in relay.log()
    status, headers, answer = post_once(relay, 4)
    assert status == 202 and "idempotent-replayed" not in headers
    assert not {m["id"] for m in answer["messages"]} & set(ids)
    wait_until(lambda: sum(seqs_at(sink).values()) >= 4, timeout=30)
    wait_until(lambda: relay.queued_ids() == [], timeout=30)
    assert seqs_at(sink) == Counter(["1.0", "4.0", "4.1", "4.2"])
