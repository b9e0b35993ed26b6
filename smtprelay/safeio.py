"""Durable file writes: temp file in the same directory, fsync, rename, directory fsync.

The temp file lives in the destination directory because a rename is atomic only
within one filesystem; the directory fsync makes the rename itself durable (the step
chasquid's safeio forgets). Every file name without the ``.tmp`` suffix is complete.
"""

from __future__ import annotations

import contextlib
import os
import threading

TMP_SUFFIX = ".tmp"


def write_file(dir_fd: int, name: str, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``name`` via a fsynced temp file and rename; no directory fsync.

    ``exclusive`` refuses to replace an existing ``name`` (``FileExistsError``).
    The caller fsyncs the directory once after all renames that must be durable together.
    """
    tmp = name + TMP_SUFFIX
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if exclusive:
        flags |= os.O_EXCL  # a concurrent writer of the same name fails here, not later
    fd = os.open(tmp, flags, 0o640, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dir_fd, tmp)
        raise
    os.close(fd)
    try:
        if exclusive:
            # link() fails atomically if the name exists, where rename() would replace it.
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise
    if exclusive:
        # The file is in place: a leftover temp name is harmless (start-up removes it)
        # and must not turn a written file into a reported failure.
        _unlink_quietly(dir_fd, tmp)


def fsync_dir(dir_fd: int) -> None:
    os.fsync(dir_fd)


class DirectorySync:
    """Group commit for one directory: concurrent callers share fsyncs.

    A caller's renames are durable once an fsync of the directory *started* after them
    has finished. While one fsync runs, later callers wait; the next fsync then covers
    all of them at once, so N sessions committing together pay for about two fsyncs
    instead of N. A failed fsync covers no one: waiters try again themselves.
    """

    def __init__(self, dir_fd: int) -> None:
        self._fd = dir_fd
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out
        self._covered = 0  # every ticket up to this one is durable
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._covered < ticket:
                if not self._running:
                    self._running = True
                    target = self._requested
                    break
                self._cond.wait()
            else:
                return
        ok = False
        try:
            os.fsync(self._fd)
            ok = True
        finally:
            with self._cond:
                self._running = False
                if ok:
                    self._covered = max(self._covered, target)
                self._cond.notify_all()


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
