"""The queue outlives the process: a message spooled before start-up is delivered, and a
kill -9 in the middle of delivery loses no recipient (duplicates only for deliveries that
were in flight)."""

from __future__ import annotations

import os
import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtprelay import ids
from smtprelay.envelope import Client, Envelope, Recipient
from smtprelay.spool import Spool
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.delivery_support import (
    MX1,
    assert_delivered_intact,
    make_message,
    send,
    statuses,
    submit,
    wait_removed,
    wait_status,
)
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]


def test_message_spooled_before_start_up_is_delivered(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    make_daemon: Callable[..., Daemon],
    delivery_config: Callable[..., dict[str, Any]],
) -> None:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    # First life: the harness default routes delivery to a closed port; attempts defer.
    first = make_daemon(name="first", overrides={"delivery": {"retry_schedule": ["1s"]}})
    sent: dict[str, tuple[str, bytes]] = {}
    for n in range(3):
        rcpt, data = f"user{n}@dest.test", make_message(f"spooled-{n}")
        sent[submit(first, [rcpt], data)] = (rcpt, data)
    for qid, (rcpt, _) in sent.items():
        (line, *_) = wait_status(first, qid, rcpt, "deferred")
        assert line.dsn == "4.4.1", line
    assert first.stop() == 0
    assert sorted(first.queued_ids()) == sorted(sent)

    # Second life: same spool, delivery by MX to a live server.
    sink = make_sink(MX1, name="mx1.dest.test")
    second = make_daemon(
        name="second",
        overrides={
            "spool": {"dir": str(first.spool)},
            "delivery": delivery_config(),
        },
    )
    for qid, (rcpt, data) in sent.items():
        wait_removed(second, qid)
        assert statuses(second, qid, rcpt) == ["sent"]
        assert_delivered_intact(sink, qid, data, [rcpt])
    assert second.queued_ids() == []
    assert len(sink.messages) == 3


KILL_MESSAGES = 200
KILL_AFTER = 80  # deliveries at the sink before the kill
PER_DESTINATION = 5
SEQ = re.compile(rb"\r\nX-Tag: kill-(\d+)\r\n")
RCPTS = ("alice@one.test", "bob@two.test")  # two destinations, one receiving host


@pytest.mark.slow
def test_kill_9_during_delivery_loses_no_recipient(
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
) -> None:
    for domain in ("one.test", "two.test"):
        dns.zone.mx(domain, 10, "mx.shared.test")
    dns.zone.a("mx.shared.test", MX1)
    # Slow to answer the final dot: many deliveries are in flight at any moment.
    sink = make_sink(MX1, name="mx.shared.test", data_delay=0.2)
    relay = delivering_relay(delivery={"per_destination_concurrency": PER_DESTINATION})
    acked: dict[int, str] = {}
    bodies = {n: make_message(f"kill-{n}") for n in range(KILL_MESSAGES)}

    def submitter() -> None:
        try:
            with smtplib.SMTP(
                LOOPBACK, relay.port, local_hostname="client.test", timeout=30
            ) as client:
                client.ehlo()
                for n in range(KILL_MESSAGES):
                    acked[n] = send(client, list(RCPTS), bodies[n])
        except (OSError, smtplib.SMTPException):
            pass  # killed under us: only what got a 250 counts

    thread = threading.Thread(target=submitter)
    thread.start()
    wait_until(
        lambda: len(sink.messages) >= KILL_AFTER or not thread.is_alive(), 60, "deliveries to start"
    )
    wait_until(lambda: len(sink.messages) >= KILL_AFTER, 60, f"{KILL_AFTER} deliveries")
    killed_at = time.monotonic()
    relay.kill()
    at_kill = len(sink.messages)
    thread.join(30)
    assert not thread.is_alive()
    assert at_kill < 2 * len(acked), "the kill must land in the middle of delivery"

    sink.data_delay = 0.0
    relay.start()
    wait_until(
        lambda: relay.queued_ids() == [],
        60,
        lambda: f"the queue to empty ({len(relay.queued_ids())} left)\n{relay.log()}",
    )

    copies: Counter[tuple[int, str]] = Counter()
    first_copy_at: dict[tuple[int, str], float] = {}
    for message in sink.messages:
        match = SEQ.search(message.content)
        assert match, message.content[:300]
        n = int(match.group(1))
        assert message.body() == bodies[n], f"message {n} arrived altered"
        for rcpt in message.rcpt_tos:
            copies[(n, rcpt)] += 1
            first_copy_at.setdefault((n, rcpt), message.at)
    lost = [(n, rcpt) for n in acked for rcpt in RCPTS if copies[(n, rcpt)] == 0]
    assert lost == [], f"{len(lost)} acknowledged recipient(s) never delivered: {lost[:10]}"
    # A second copy only for a delivery in flight at the kill: its first copy was taken
    # by the sink just before the kill (its result not yet in the spool), never earlier.
    duplicates = {key: c for key, c in copies.items() if c > 1}
    assert all(c == 2 for c in duplicates.values()), duplicates
    early = {
        key: round(killed_at - first_copy_at[key], 2)
        for key in duplicates
        if first_copy_at[key] < killed_at - 1.0
    }
    assert early == {}, f"delivered again though delivered long before the kill: {early}"
    # Every acknowledged recipient is logged as sent (in one life or the other).
    for qid in acked.values():
        for rcpt in RCPTS:
            assert "sent" in statuses(relay, qid, rcpt), (qid, rcpt)


FOUND_MESSAGES = 1500
FOUND_TAG = re.compile(rb"\r\nX-Tag: (found|new)-(\d+)\r\n")


def test_a_queue_found_at_start_is_loaded_while_serving_and_delivered_once(
    tmp_path: Path,
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    make_daemon: Callable[..., Daemon],
    delivery_config: Callable[..., dict[str, Any]],
) -> None:
    """The envelopes of a queue found at start-up are read after READY=1, while new mail
    is accepted and delivered: every message, found or new, reaches the sink exactly
    once, and the log says when the load is done."""
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    sink = make_sink(MX1, name="mx1.dest.test")
    spool_dir = tmp_path / "found-spool"
    spool = Spool(spool_dir)
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # set-up only: the fixture's durability is irrelevant
    try:
        for n in range(FOUND_MESSAGES):
            data = make_message(f"found-{n}")
            spool.commit(
                Envelope(
                    qid=ids.new_id(),
                    sender="app@example.com",
                    recipients=[Recipient(f"user{n % 7}@dest.test")],
                    client=Client("127.0.0.1", 40000, "fixture"),
                    arrival=time.time(),
                    size=len(data),
                    next_attempt=time.time(),
                ),
                data,
            )
    finally:
        os.fsync = real_fsync
        spool.close()
    relay = make_daemon(overrides={"spool": {"dir": str(spool_dir)}, "delivery": delivery_config()})
    new = [submit(relay, ["late@dest.test"], make_message(f"new-{n}")) for n in range(3)]
    wait_until(
        lambda: relay.queued_ids() == [] and "queued message(s) loaded" in relay.log(),
        120,
        lambda: f"the queue to empty ({len(relay.queued_ids())} left)\n{relay.log()}",
    )
    copies: Counter[tuple[bytes, int]] = Counter()
    for message in sink.messages:
        match = FOUND_TAG.search(message.content)
        assert match, message.content[:300]
        copies[(match.group(1), int(match.group(2)))] += 1
    expected = {(b"found", n) for n in range(FOUND_MESSAGES)} | {(b"new", n) for n in range(3)}
    assert set(copies) == expected
    assert max(copies.values()) == 1, {k: c for k, c in copies.items() if c > 1}
    assert f"spool: {FOUND_MESSAGES} queued message(s) loaded, 0 quarantined" in relay.log()
    for qid in new:
        assert statuses(relay, qid, "late@dest.test") == ["sent"]
