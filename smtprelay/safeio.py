"""Durable file writes: temp file in the same directory, fsync, rename, directory fsync.

The temp file lives in the destination directory because a rename is atomic only
within one filesystem; the directory fsync makes the rename itself durable (the step
chasquid's safeio forgets). Every file name without the ``.tmp`` suffix is complete.

New files (:func:`create_file`) take a shorter road: written in full as an unnamed
``O_TMPFILE`` and only then linked under their name, so a name never shows part of a
file, and made durable afterwards by one fsync of the file and one (shared) of the
directory. Nothing is renamed, and a crash leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading

TMP_SUFFIX = ".tmp"


def write_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to ``name`` via a fsynced temp file and rename; no directory fsync.

    The caller fsyncs the directory once after all renames that must be durable together.
    """
    tmp = name + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dir_fd, tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise


def create_file(dir_fd: int, name: str, data: bytes) -> int:
    """Create ``name`` holding all of ``data``; it is complete but not yet durable.

    Fails with ``FileExistsError`` if ``name`` exists (never replaces a file). Returns
    the open descriptor: the caller makes the file durable (``os.fsync`` of it, then a
    directory fsync) or takes it back (unlink), and closes it. Only page-cache work is
    done here, so an event loop may call it; the fsyncs are what block.
    """
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        return _create_via_temp_name(dir_fd, name, data)  # no O_TMPFILE on this filesystem
    try:
        _write_all(fd, data)
        # linkat(AT_SYMLINK_FOLLOW) on the /proc link names the unnamed file; unlike
        # rename it fails if the name exists.
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create_via_temp_name(dir_fd: int, name: str, data: bytes) -> int:
    tmp = name + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)
    try:
        _write_all(fd, data)
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dir_fd, tmp)
        raise
    _unlink_quietly(dir_fd, tmp)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
