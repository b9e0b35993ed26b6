"""The /healthz spool probe: it proves the queue directory takes a new file, and leaves
nothing behind in it (the probe file is unnamed where the filesystem allows)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtprelay.web.health import PROBE_TIMEOUT, SpoolProbe


@contextlib.asynccontextmanager
async def _probing(
    directory: Path, probe_timeout: float = PROBE_TIMEOUT
) -> AsyncIterator[SpoolProbe]:
    probe = SpoolProbe(directory, probe_timeout)
    try:
        yield probe
    finally:
        probe.close()


def _check(directory: Path) -> str | None:
    async def run() -> str | None:
        async with _probing(directory) as probe:
            return await probe.check()

    return asyncio.run(run())


def test_a_writable_queue_directory_passes_and_stays_empty(tmp_path: Path) -> None:
    assert _check(tmp_path) is None
    assert os.listdir(tmp_path) == []


def test_a_missing_queue_directory_fails_naming_the_reason(tmp_path: Path) -> None:
    answer = _check(tmp_path / "gone")
    assert answer is not None
    assert answer.startswith(f"spool {tmp_path / 'gone'} is not writable: ")
    assert "No such file or directory" in answer


def test_without_unnamed_files_a_named_probe_is_written_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filesystem without O_TMPFILE (some network and FUSE filesystems) answers
    # EOPNOTSUPP; none is at hand on loopback, so open() answers as it would.
    real_open = os.open
    opened: list[str] = []

    def open_without_tmpfile(path: str | Path, flags: int, *args: int, **kwargs: int) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        opened.append(os.path.basename(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_without_tmpfile)
    assert _check(tmp_path) is None
    assert opened == [".healthz.tmp"]
    assert os.listdir(tmp_path) == []


async def _until(probe: SpoolProbe, answer: str | None) -> str | None:
    """Ask until the probe answers ``answer`` (what a health checker polling does)."""
    for _ in range(500):
        got = await probe.check()
        if got == answer:
            return got
        await asyncio.sleep(0.01)
    return got


def test_a_slow_probe_is_answered_for_by_the_last_one_until_it_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk hangs after one good probe: requests keep being answered at once (by the
    # good probe) while the hung one is younger than the timeout, then fail, and pass
    # again once the disk answers.
    real_open = os.open
    disk = threading.Event()
    disk.set()

    def hanging_open(path: str | Path, flags: int, *args: int, **kwargs: int) -> int:
        disk.wait()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", hanging_open)
    hung = f"spool {tmp_path}: a test write did not finish in 1s"

    async def run() -> list[str | None]:
        answers: list[str | None] = []
        async with _probing(tmp_path, probe_timeout=1.0) as probe:
            try:
                answers.append(await probe.check())  # waits for the first probe
                disk.clear()
                answers.append(await probe.check())  # starts the hung probe, answers at once
                await asyncio.sleep(1.1)
                answers.append(await probe.check())
            finally:
                disk.set()
            answers.append(await _until(probe, None))
        return answers

    assert asyncio.run(run()) == [None, None, hung, None]


def test_what_one_request_finds_a_later_one_reports(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    gone = f"spool {queue} is not writable: No such file or directory"

    async def run() -> list[str | None]:
        answers: list[str | None] = []
        async with _probing(queue) as probe:
            answers.append(await probe.check())
            queue.rmdir()
            answers.append(await probe.check())  # the last probe's answer, at once
            answers.append(await _until(probe, gone))
            queue.mkdir()
            answers.append(await _until(probe, None))
        return answers

    assert asyncio.run(run()) == [None, None, gone, None]


def test_after_a_quiet_spell_a_request_waits_for_its_own_probe(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()

    async def run() -> list[str | None]:
        async with _probing(queue, probe_timeout=1.0) as probe:
            first = await probe.check()
            queue.rmdir()
            await asyncio.sleep(1.1)  # the last answer is older than the timeout
            return [first, await probe.check()]

    assert asyncio.run(run()) == [None, f"spool {queue} is not writable: No such file or directory"]
