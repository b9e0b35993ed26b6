"""The per-recipient ``sequence`` of events (issue 13): counted per (message, recipient),
message-level events after every recipient, 0 without a message, and durable across a
reopen of the store. Real SQLite files in a temporary directory."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from smtprelay import maillog
from smtprelay.events.db import ROWS_PER_STATEMENT, Database
from smtprelay.events.model import Fact, MessageInfo
from smtprelay.events.store import EventStore, Subscriber
from tests.unit.test_events import delivery, queued


def open_store(path: Path) -> EventStore:
    return EventStore(Database(path / "events.db").open())


def sequences(s: EventStore) -> list[tuple[str, str | None, int]]:
    events, _ = s.page(0, 100)
    return [(e["type"], e["data"].get("recipient"), e["data"]["sequence"]) for e in events]


def notice(qid: str, t: float) -> Fact:
    fields: dict[str, Any] = {"event": maillog.Event.NOTICE, "kind": "failure", "notice_qid": "N"}
    return Fact(t, maillog.Event.NOTICE, qid, fields)


def test_each_recipient_counts_on_from_the_message_events(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.commit(
        [
            queued("Q", 1.0),
            delivery("Q", "a@x", "deferred", 450, "4.2.1", 2.0),
            delivery("Q", "b@x", "sent", 250, "2.0.0", 2.1),
            delivery("Q", "a@x", "deferred", 450, "4.2.1", 3.0),
            delivery("Q", "c@x", "bounced", 550, "5.1.1", 3.1),
            notice("Q", 3.2),
            delivery("Q", "A@X", "sent", 250, "2.0.0", 4.0),
        ],
        {"Q": MessageInfo(recipients=["a@x", "b@x", "c@x"])},
        [],
        4.0,
    )
    assert sequences(s) == [
        ("message.received", None, 1),
        ("recipient.deferred", "a@x", 2),
        ("recipient.delivered", "b@x", 2),  # b's own count: independent of a's
        ("recipient.deferred", "a@x", 3),
        ("recipient.bounced", "c@x", 2),
        ("notice.sent", None, 4),  # after every recipient's events so far
        ("recipient.delivered", "A@X", 5),  # the same mailbox, after the notice
    ]


def test_counters_survive_a_reopen_and_the_cache(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.commit([queued("Q", 1.0), delivery("Q", "a@x", "deferred", 450, "4.2.1", 2.0)], {}, [], 2.0)
    s.conn.close()
    again = open_store(tmp_path)  # a restart: nothing cached
    again.commit([delivery("Q", "a@x", "sent", 250, "2.0.0", 3.0)], {}, [], 3.0)
    assert [seq for _, _, seq in sequences(again)] == [1, 2, 3]


def test_a_rejection_before_queueing_is_sequence_0(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    fields = {"event": maillog.Event.REJECT, "command": "RCPT", "code": 550, "dsn": "5.7.1"}
    s.commit([Fact(1.0, maillog.Event.REJECT, None, fields)], {}, [], 1.0)
    assert sequences(s) == [("message.rejected", None, 0)]


def test_a_failed_commit_reuses_no_number(tmp_path: Path) -> None:
    """A rolled-back batch leaves the counters where the table has them."""
    s = open_store(tmp_path)
    s.commit([queued("Q", 1.0)], {}, [], 1.0)
    s.conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        s.commit([delivery("Q", "a@x", "sent", 250, "2.0.0", 2.0)], {}, [Subscriber("w", ())], 2.0)
    s.conn.execute("DROP TRIGGER refuse")
    s.commit([delivery("Q", "a@x", "sent", 250, "2.0.0", 3.0)], {}, [], 3.0)
    assert [seq for _, _, seq in sequences(s)] == [1, 2]


def test_prune_forgets_old_counters(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.commit([queued("Q", 1.0)], {}, [], 1.0)
    s.prune(10.0)
    left = s.conn.execute("SELECT COUNT(*) FROM sequences").fetchone()[0]
    assert left == 0


def test_a_batch_larger_than_a_statement_numbers_and_routes_every_event(tmp_path: Path) -> None:
    """Reads and writes go several hundred rows per statement: a batch over those sizes
    (and a restart between two of them) keeps every recipient's numbers, and each
    outbox row names the event of its type."""
    count = 2 * ROWS_PER_STATEMENT + 7
    s = open_store(tmp_path)
    first = [queued(f"Q{n}", 1.0) for n in range(count)]
    s.commit(first, {f"Q{n}": MessageInfo(recipients=["a@x"]) for n in range(count)}, [], 1.0)
    s.conn.close()
    again = open_store(tmp_path)  # nothing cached: every counter and info read back
    later = [delivery(f"Q{n}", "a@x", "deferred", 450, "4.2.1", 2.0) for n in range(count)]
    later += [delivery(f"Q{n}", "a@x", "sent", 250, "2.0.0", 3.0) for n in range(0, count, 2)]
    hook = Subscriber("w", ("recipient.delivered",))
    written = again.commit(later, {}, [hook], 3.0)
    assert written.by_type == {"recipient.deferred": count, "recipient.delivered": (count + 1) // 2}
    rows = again.conn.execute(
        "SELECT e.type, e.qid FROM outbox o JOIN events e ON e.seq = o.event ORDER BY o.event"
    ).fetchall()
    assert rows == [("recipient.delivered", f"Q{n}") for n in range(0, count, 2)]
    numbers = {(e["type"], e["data"]["qid"]): e["data"]["sequence"] for e in all_events(again)}
    assert all(numbers[("message.received", f"Q{n}")] == 1 for n in range(count))
    assert all(numbers[("recipient.deferred", f"Q{n}")] == 2 for n in range(count))
    assert all(numbers[("recipient.delivered", f"Q{n}")] == 3 for n in range(0, count, 2))
    stored = again.conn.execute("SELECT COUNT(*), MIN(last), MAX(last) FROM sequences")
    assert stored.fetchone() == (2 * count, 1, 3)  # the message's own counter and a@x's


def all_events(s: EventStore) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = 0
    while True:
        page, cursor = s.page(cursor, 1000)
        if not page:
            return found
        found += page
