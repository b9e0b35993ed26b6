"""safeio.DirectorySync: group commit must never return before a covering fsync."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from smtprelay import safeio


def test_every_caller_is_covered_by_an_fsync_that_started_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    clock = iter(range(1, 10**9))
    lock = threading.Lock()
    fsyncs: list[tuple[int, int]] = []  # (start tick, end tick)

    def slow_fsync(_: int) -> None:
        with lock:
            start = next(clock)
        time.sleep(0.002)
        with lock:
            fsyncs.append((start, next(clock)))

    monkeypatch.setattr(os, "fsync", slow_fsync)
    sync = safeio.DirectorySync(fd)
    problems: list[str] = []

    def caller() -> None:
        for _ in range(20):
            with lock:
                asked = next(clock)
            sync.sync()
            with lock:
                returned = next(clock)
                if not any(asked < start and end < returned for start, end in fsyncs):
                    problems.append(f"asked at {asked}, returned at {returned}, no fsync between")

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    os.close(fd)
    assert problems == []
    assert len(fsyncs) < 8 * 20, "concurrent callers must share fsyncs"


def test_a_failed_fsync_covers_no_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    calls = {"n": 0}

    def failing_once(_: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_once)
    sync = safeio.DirectorySync(fd)
    with pytest.raises(OSError):
        sync.sync()
    sync.sync()  # must fsync again, not trust the failed one
    assert calls["n"] == 2
    os.close(fd)
