"""The Idempotency-Key store: in flight, replay, durable records read back, expiry."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.web.idempotency import DIRNAME, Conflict, IdempotencyStore, Record


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
    store.commit(store.prepare(record))
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
