"""The Idempotency-Key store: in flight, replay, durable records read back, expiry, and
the records a crash left pending, settled against the spool at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.web.idempotency import (
    DIRNAME,
    PENDING,
    Conflict,
    IdempotencyStore,
    Record,
    file_name,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_in_flight_then_replayed_then_read_back_until_it_expires(tmp_path: Path) -> None:
    clock = Clock()
    store = IdempotencyStore(tmp_path, clock)
    store.open()
    assert store.begin("tok:k1") is None
    with pytest.raises(Conflict):
        store.begin("tok:k1")
    record = Record("tok:k1", "f" * 64, 202, {"id": "Q1", "status": "queued"}, 2000.0)
    pending = store.prepare(record)
    pending.sync()
    pending.commit()
    store.finish(record, durable=True)
    assert store.begin("tok:k1") == record
    # A 4xx answer is replayed too, but from memory only.
    assert store.begin("tok:k2") is None
    refused = Record("tok:k2", "e" * 64, 422, {"status": 422}, 2000.0)
    store.finish(refused, durable=False)
    assert store.begin("tok:k2") == refused
    store.close()
    (tmp_path / DIRNAME / "garbage.json").write_bytes(b'{"key": ')  # a torn write

    again = IdempotencyStore(tmp_path, clock)
    again.open()
    assert again.begin("tok:k1") == record
    assert again.begin("tok:k2") is None  # not durable: a fresh start
    assert not (tmp_path / DIRNAME / "garbage.json").exists()
    clock.now = 2000.0
    assert again.begin("tok:k1") is None  # expired: the key is new again
    again.close()
    assert list((tmp_path / DIRNAME).iterdir()) == []


def test_abandoned_keys_are_free_again(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    store.open()
    assert store.begin("tok:k") is None
    store.abandon("tok:k")
    assert store.begin("tok:k") is None
    store.close()


class Spooled:
    """The spool as the start-up check sees it: queue ID -> the key in its envelope."""

    def __init__(self, keys: dict[str, str | None]) -> None:
        self.keys = keys
        self.removed: list[str] = []

    def key_of(self, qid: str) -> str | None:
        return self.keys.get(qid)

    def remove(self, qid: str) -> None:
        self.removed.append(qid)
        del self.keys[qid]


def crashed_before_the_rename(tmp_path: Path, record: Record) -> None:
    """A commit that a crash stopped after the pending record's fsync."""
    store = IdempotencyStore(tmp_path)
    store.open()
    store.prepare(record).sync()
    store.close()  # then kill -9: no rename, no answer


def test_a_pending_record_whose_messages_are_all_durable_is_committed(tmp_path: Path) -> None:
    record = Record("tok:b", "f" * 64, 202, {"messages": []}, 9e9, ("Q1", "Q2"))
    crashed_before_the_rename(tmp_path, record)
    spooled = Spooled({"Q1": "tok:b", "Q2": "tok:b", "Q3": None})
    store = IdempotencyStore(tmp_path)
    store.open(spooled)
    assert store.begin("tok:b") == record  # replayed, not sent again
    assert spooled.removed == []
    assert [p.name for p in (tmp_path / DIRNAME).iterdir()] == [file_name("tok:b")]
    store.close()


def test_a_pending_record_missing_a_message_takes_back_the_others(tmp_path: Path) -> None:
    record = Record("tok:b", "f" * 64, 202, {"messages": []}, 9e9, ("Q1", "Q2", "Q3"))
    crashed_before_the_rename(tmp_path, record)
    # Q2 never reached the disk; Q3 is another message (another key): not ours to remove.
    spooled = Spooled({"Q1": "tok:b", "Q3": "tok:other"})
    store = IdempotencyStore(tmp_path)
    store.open(spooled)
    assert spooled.removed == ["Q1"]  # never acknowledged: a retry sends it once
    assert store.begin("tok:b") is None
    assert list((tmp_path / DIRNAME).iterdir()) == []
    store.close()


def test_a_discarded_pending_record_leaves_nothing(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path)
    store.open()
    record = Record("tok:k", "f" * 64, 202, {}, 9e9, ("Q1",))
    store.prepare(record).discard()
    again = store.prepare(record)  # a retry's record after a failed commit
    again.sync()
    again.commit()
    again.discard()  # the commit point passed, but the messages were taken back
    assert list((tmp_path / DIRNAME).iterdir()) == []
    assert not (tmp_path / DIRNAME / file_name("tok:k", PENDING)).exists()
    store.close()
