"""The backlog gauge's counts kept in memory (events.backlog) against a real count of a
real outbox (SQLite in a temporary directory) after commits, settles and a removal."""

from __future__ import annotations

from pathlib import Path

from smtprelay.events.backlog import Backlog
from smtprelay.events.db import Database
from smtprelay.events.model import Fact
from smtprelay.events.outbox import Outbox, Settled
from smtprelay.events.store import EventStore, Subscriber
from tests.unit.test_events import delivery, queued


def test_counts_follow_the_outbox(tmp_path: Path) -> None:
    conn = Database(tmp_path / "events.db").open()
    store, outbox, backlog = EventStore(conn), Outbox(conn), Backlog()
    subs = [Subscriber("all", ()), Subscriber("rcpt", ("recipient.*",)), Subscriber("none", ())]

    def commit(facts: list[Fact], subscribers: list[Subscriber]) -> None:
        written = store.commit(facts, {}, subscribers, 1.0)
        backlog.written(subscribers, written.by_type)

    commit([queued("Q", 1.0), delivery("Q", "a@x", "deferred", 450, "4.2.1", 2.0)], subs[:2])
    commit([delivery("Q", "a@x", "sent", 250, "2.0.0", 3.0)], subs[:2])
    assert backlog.snapshot() == outbox.backlog() == {"all": 3, "rcpt": 2}

    due = outbox.due("all", 10.0, 2)
    outbox.settle("all", Settled(delivered=[due[0].seq], given_up=[due[1].seq]))
    backlog.settled("all", 2)
    assert backlog.snapshot() == outbox.backlog() == {"all": 1, "rcpt": 2}

    outbox.remove("rcpt")
    backlog.forget(["rcpt"])
    assert backlog.snapshot() == outbox.backlog() == {"all": 1}
    # A full count replaces the numbers; a webhook whose rows are all gone shows 0.
    backlog.replace({"all": 5})
    outbox.settle("all", Settled(delivered=[outbox.due("all", 10.0, 1)[0].seq]))
    backlog.settled("all", 1)
    backlog.replace(outbox.backlog())
    assert backlog.snapshot() == {"all": 0}
    backlog.settled("all", 3)  # never below nothing
    assert backlog.snapshot() == {"all": 0}
