"""On-disk queue: one file per queued message, its envelope first, then its bytes.

Layout under ``[spool] dir``::

    queue/QID.msg     line 1: the envelope (smtprelay.envelope.Envelope) as one line of JSON
                      then:   the message bytes exactly as accepted (Received: first)
    corrupt/          files that could not be read at start-up, kept for the operator

``head -1 QID.msg`` shows the envelope, ``tail -n +2 QID.msg`` the message. A new message
is written in full as an unnamed file and linked as ``QID.msg`` (:meth:`Spool.create`,
page-cache work only, so the event loop does it itself), then made durable by an fsync of
the file and a directory fsync shared with concurrent commits (:meth:`NewFile.sync`, the
part that blocks, in a thread); only then is it acknowledged. One file and one fsync
per message, as Postfix's queue file costs. A crash before the sync can leave a complete
but unacknowledged message, which is delivered (the client, never told 250, may send it
again: a duplicate, never a loss). After an attempt the whole file is rewritten through
a temp file and a rename with the new envelope. Removal after delivery is not synced on
its own: the next directory fsync makes it durable, and until then a power loss could
bring a delivered message back (delivered twice, as with Postfix). Except for
:meth:`Spool.create` and :meth:`Spool.discard`, every method here blocks on disk I/O and
the event loop calls it through an executor.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from smtprelay import safeio
from smtprelay.envelope import Envelope
from smtprelay.errors import RelayError

SUFFIX = ".msg"
# Threads for the blocking part of spool writes (the fsyncs). Many at once let the
# filesystem journal commit them together, so more than the CPU count would suggest.
SYNC_THREADS = 32
# First read of a message file at recovery: enough for the envelope line of most.
HEAD_CHUNK = 4096


class SpoolError(RelayError):
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
        return [
            name.removesuffix(SUFFIX)
            for name in os.listdir(self.queue_dir)
            if name.endswith(SUFFIX)
        ]

    def commit(self, envelope: Envelope, data: bytes) -> None:
        """Make a new message durable. On return it survives a crash or power loss."""
        self.create(envelope, data).sync()

    def create(self, envelope: Envelope, data: bytes) -> NewFile:
        """Write a new message's file, complete but not yet durable: sync it before
        telling anyone it is queued. Does not block on the disk."""
        return self.create_encoded(envelope.qid, envelope.to_json(), data)

    def create_encoded(self, qid: str, encoded: bytes, data: bytes) -> NewFile:
        """:meth:`create` with the envelope already encoded (``Envelope.to_json``, one
        line): by whoever needs that JSON too, or encoded in another process."""
        try:
            fd = safeio.create_file(self._queue_fd, qid + SUFFIX, encoded + b"\n" + data)
        except FileExistsError:
            # Another message owns this queue ID: leave its file alone.
            raise SpoolError(f"cannot queue {qid}: queue ID already in use") from None
        except OSError as e:
            raise _spool_error(qid, e) from e
        return NewFile(self, qid, fd)

    def update(self, envelope: Envelope, data: bytes | None = None) -> None:
        """Durably replace the envelope of a queued message (state after an attempt).

        ``data`` saves re-reading the message when the caller has it at hand.
        """
        if data is None:
            data = self.read_message(envelope.qid)
        safeio.write_file(self._queue_fd, envelope.qid + SUFFIX, _record(envelope, data))
        self._queue_sync.sync()

    def remove(self, qid: str) -> None:
        """Remove a message durably (operator actions)."""
        self._unlink(qid + SUFFIX)
        self._queue_sync.sync()

    def discard(self, qid: str) -> None:
        """Remove a finished message; durable with the next directory fsync. Does not
        block on the disk (an unlink), so the event loop calls it itself."""
        self._unlink(qid + SUFFIX)

    def load(self, qid: str) -> Envelope:
        with open(self.path(qid), "rb") as f:
            return Envelope.from_json(f.readline())

    def read_message(self, qid: str) -> bytes:
        with open(self.path(qid), "rb") as f:
            f.readline()
            return f.read()

    def read_both(self, qid: str) -> tuple[Envelope, int]:
        """The envelope and the size of the data that follows it (for recovery checks).

        Plain system calls on a descriptor, not a Python file object: recovery does this
        for every queued message before the daemon is ready, and the buffered-file layer
        cost more than the reading itself (1,000,000 messages).
        """
        fd = os.open(qid + SUFFIX, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._queue_fd)
        try:
            total = os.fstat(fd).st_size
            head = os.read(fd, HEAD_CHUNK)
            end = head.find(b"\n")
            while end < 0 and len(head) < total:  # a long envelope (many recipients)
                more = os.read(fd, 1 << 16)
                if not more:
                    break
                head += more
                end = head.find(b"\n")
        finally:
            os.close(fd)
        header = head[: end + 1] if end >= 0 else head
        return Envelope.from_json(header), total - len(header)

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


class NewFile:
    """A message file created by :meth:`Spool.create`, waiting for :meth:`sync`."""

    def __init__(self, spool: Spool, qid: str, fd: int) -> None:
        self._spool = spool
        self.qid = qid
        self._fd = fd

    def sync(self) -> None:
        """Make the file and its name durable (blocks on the disk). On failure the file
        is taken back, as it was never acknowledged, and SpoolError raised."""
        try:
            os.fsync(self._fd)
            self._spool._queue_sync.sync()
        except OSError as e:
            self._spool._unlink(self.qid + SUFFIX)
            raise _spool_error(self.qid, e) from e
        finally:
            os.close(self._fd)

    def close(self) -> None:
        """Leave the file complete but not durable (a file given up: the caller takes
        it back)."""
        os.close(self._fd)

    def sync_file(self) -> None:
        """Make the file's content durable, not yet its name: a group of new files
        shares one :meth:`Spool.sync` of the directory after this. On failure as
        :meth:`sync`."""
        try:
            os.fsync(self._fd)
        except OSError as e:
            self._spool._unlink(self.qid + SUFFIX)
            raise _spool_error(self.qid, e) from e
        finally:
            os.close(self._fd)


def _record(envelope: Envelope, data: bytes) -> bytes:
    # Compact JSON never contains a raw newline, so the first line is the envelope.
    return envelope.to_json() + b"\n" + data


def _spool_error(qid: str, error: OSError) -> SpoolError:
    return SpoolError(
        f"cannot queue {qid}: {error.strerror or error}",
        no_space=error.errno in (errno.ENOSPC, errno.EDQUOT),
    )
