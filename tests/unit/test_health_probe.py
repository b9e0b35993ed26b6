"""The /healthz spool probe: it proves the queue directory takes a new file, and leaves
nothing behind in it (the probe file is unnamed where the filesystem allows)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from smtprelay.web.health import SpoolProbe


def _check(directory: Path) -> str | None:
    async def run() -> str | None:
        probe = SpoolProbe(directory)
        try:
            return await probe.check()
        finally:
            probe.close()

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
