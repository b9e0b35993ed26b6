"""On-disk queue: one file per queued message, its envelope first, then its bytes.

Layout under ``[spool] dir``::

    queue/QID.msg     line 1: the envelope (smtprelay.envelope.Envelope) as one line of JSON
                      then:   the message bytes exactly as accepted (Received: first)
    corrupt/          files that could not be read at start-up, kept for the operator

``head -1 QID.msg`` shows the envelope, ``tail -n +2 QID.msg`` the message. A message
exists once ``QID.msg`` has been renamed into ``queue/`` (after an fsync of its data) and
the directory fsynced: one file, one fsync and one rename per message, where Postfix's
queue file costs the same. After an attempt the whole file is rewritten the same way
with the new envelope. Every method here blocks on disk I/O; the event loop calls them
through an executor.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from smtprelay import safeio
from smtprelay.envelope import Envelope

SUFFIX = ".msg"


class SpoolError(Exception):
    """A spool operation failed; ``no_space`` tells the client to retry later (452)."""

    def __init__(self, message: str, *, no_space: bool = False) -> None:
        super().__init__(message)
        self.no_space = no_space


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue_dir = root / "queue"
        self.corrupt_dir = root / "corrupt"
        for d in (self.queue_dir, self.corrupt_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._queue_fd = os.open(self.queue_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._queue_sync = safeio.DirectorySync(self._queue_fd)

    def close(self) -> None:
        os.close(self._queue_fd)

    def path(self, qid: str) -> Path:
        return self.queue_dir / (qid + SUFFIX)

    def ids(self) -> list[str]:
        """Queue IDs of the messages in ``queue/`` now (any order)."""
        return [name.removesuffix(SUFFIX) for name in os.listdir(self.queue_dir)
                if name.endswith(SUFFIX)]

    def commit(self, envelope: Envelope, data: bytes) -> None:
        """Make a new message durable. On return it survives a crash or power loss."""
        qid = envelope.qid
        try:
            safeio.write_file(
                self._queue_fd, qid + SUFFIX, _record(envelope, data), exclusive=True
            )
        except FileExistsError:
            # Another message owns this queue ID: leave its file alone.
            raise SpoolError(f"cannot queue {qid}: queue ID already in use") from None
        except OSError as e:
            raise _spool_error(qid, e) from e
        try:
            self._queue_sync.sync()
        except OSError as e:
            # Not acknowledged: take the message back rather than leave it half-known.
            self._unlink(qid + SUFFIX)
            raise _spool_error(qid, e) from e

    def update(self, envelope: Envelope, data: bytes | None = None) -> None:
        """Durably replace the envelope of a queued message (state after an attempt).

        ``data`` saves re-reading the message when the caller has it at hand.
        """
        if data is None:
            data = self.read_message(envelope.qid)
        safeio.write_file(self._queue_fd, envelope.qid + SUFFIX, _record(envelope, data))
        self._queue_sync.sync()

    def remove(self, qid: str) -> None:
        self._unlink(qid + SUFFIX)
        self._queue_sync.sync()

    def load(self, qid: str) -> Envelope:
        with open(self.path(qid), "rb") as f:
            return Envelope.from_json(f.readline())

    def read_message(self, qid: str) -> bytes:
        with open(self.path(qid), "rb") as f:
            f.readline()
            return f.read()

    def read_both(self, qid: str) -> tuple[Envelope, int]:
        """The envelope and the size of the data that follows it (for recovery checks)."""
        with open(self.path(qid), "rb") as f:
            header = f.readline()
            size = os.fstat(f.fileno()).st_size - len(header)
        return Envelope.from_json(header), size

    def quarantine(self, name: str) -> None:
        """Move a queue file into ``corrupt/`` for the operator."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.queue_dir / name, self.corrupt_dir / name)
        corrupt_fd = os.open(self.corrupt_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            safeio.fsync_dir(corrupt_fd)
        finally:
            os.close(corrupt_fd)
        self._queue_sync.sync()

    def sync(self) -> None:
        """Make every rename and unlink in ``queue/`` so far durable."""
        self._queue_sync.sync()

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._queue_fd)


def _record(envelope: Envelope, data: bytes) -> bytes:
    # Compact JSON never contains a raw newline, so the first line is the envelope.
    return envelope.to_json() + b"\n" + data


def _spool_error(qid: str, error: OSError) -> SpoolError:
    return SpoolError(
        f"cannot queue {qid}: {error.strerror or error}",
        no_space=error.errno in (errno.ENOSPC, errno.EDQUOT),
    )
