"""On-disk queue: one raw message file and one JSON envelope per queued message.

Layout under ``[spool] dir``::

    queue/QID.eml     the message bytes exactly as accepted (Received: header prepended)
    queue/QID.json    the envelope (smtprelay.envelope.Envelope), rewritten after attempts
    corrupt/          records that could not be read at start-up, kept for the operator

``QID.json`` is the commit marker: a message exists once its envelope has been renamed
into ``queue/`` and the directory fsynced. Data is written first, so a reader that sees
an envelope always finds complete data beside it. Every method here blocks on disk I/O;
the event loop calls them through an executor.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from smtprelay import safeio
from smtprelay.envelope import Envelope

DATA_SUFFIX = ".eml"
ENVELOPE_SUFFIX = ".json"


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

    def commit(self, envelope: Envelope, data: bytes) -> None:
        """Make a new message durable. On return it survives a crash or power loss."""
        qid = envelope.qid
        try:
            safeio.write_file(self._queue_fd, qid + DATA_SUFFIX, data, exclusive=True)
        except FileExistsError:
            # Another message owns this queue ID: leave its files alone.
            raise SpoolError(f"cannot queue {qid}: queue ID already in use") from None
        except OSError as e:
            raise _spool_error(qid, e) from e
        try:
            try:
                safeio.write_file(self._queue_fd, qid + ENVELOPE_SUFFIX, envelope.to_json())
            except BaseException:
                self._unlink(qid + DATA_SUFFIX)
                raise
            self._queue_sync.sync()
        except OSError as e:
            # Our files may be half there; without the directory fsync nothing was
            # acknowledged, and start-up recovery removes data without an envelope.
            self._unlink(qid + ENVELOPE_SUFFIX)
            self._unlink(qid + DATA_SUFFIX)
            raise _spool_error(qid, e) from e

    def update(self, envelope: Envelope) -> None:
        """Durably replace the envelope of a queued message (state after an attempt)."""
        safeio.write_file(self._queue_fd, envelope.qid + ENVELOPE_SUFFIX, envelope.to_json())
        self._queue_sync.sync()

    def remove(self, qid: str) -> None:
        """Forget a message: envelope first (the commit marker), then its data."""
        self._unlink(qid + ENVELOPE_SUFFIX)
        self._unlink(qid + DATA_SUFFIX)
        self._queue_sync.sync()

    def load(self, qid: str) -> Envelope:
        with open(self.queue_dir / (qid + ENVELOPE_SUFFIX), "rb") as f:
            return Envelope.from_json(f.read())

    def read_message(self, qid: str) -> bytes:
        with open(self.queue_dir / (qid + DATA_SUFFIX), "rb") as f:
            return f.read()

    def quarantine(self, qid: str) -> None:
        """Move whatever files a message has into ``corrupt/`` for the operator."""
        for suffix in (ENVELOPE_SUFFIX, DATA_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.queue_dir / (qid + suffix), self.corrupt_dir / (qid + suffix))
        self._queue_sync.sync()

    def sync(self) -> None:
        """Make every rename and unlink in ``queue/`` so far durable."""
        self._queue_sync.sync()

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._queue_fd)


def _spool_error(qid: str, error: OSError) -> SpoolError:
    return SpoolError(
        f"cannot queue {qid}: {error.strerror or error}",
        no_space=error.errno in (errno.ENOSPC, errno.EDQUOT),
    )
