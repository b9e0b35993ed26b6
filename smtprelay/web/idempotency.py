"""``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header) for the submission API.

A key is scoped to the token that sent it (``TOKEN-NAME:KEY``). The first request with
a key is *in flight* until it is answered; a second one meanwhile gets 409. Its answer
(status and body) is then replayed for every later request with the same key and the
same body (the SHA-256 of method, path, media type and body bytes); a different body
gets 422.

Durability: the answer of a request that queued mail is a small file in
``[spool] dir/idempotency/``, committed together with the message files, in two steps:

1. ``HASH.pending`` -- the record, naming the queue IDs it answers for -- is created and
   fsynced *alongside* the messages (the same group commit, in parallel);
2. once every message is durable it is renamed to ``HASH.json`` (and the directory
   fsynced) -- the commit point -- and only then is the answer sent and the mail
   queued.

A crash before the rename leaves a pending record. At start-up, before anything is
delivered, :meth:`IdempotencyStore.open` settles each one against the spool: if every
message it names is there (carrying the same key in ``submission.idempotency_key``),
the commit had finished but for the rename, so the record is renamed and its answer
replayed to the retry -- the crash between the fsync and the reply still replays;
otherwise the request was never answered, and the messages of it that did reach the
disk are removed, so that the retry sends them exactly once. A pending record cannot
name a delivered message: mail is queued only after the rename.

Records are kept ``[http] idempotency_retention``, and for scheduled mail at least
until its send time; expired ones are removed at start-up and as keys are used. Answers
that queued nothing (4xx) are remembered in memory only: nothing was sent, so a retry
after a restart can do no harm.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from smtprelay import safeio
from smtprelay.errors import RelayError

log = logging.getLogger("smtprelay.http")

DIRNAME = "idempotency"
RECORD = ".json"
PENDING = ".pending"
MAX_KEY = 255
# Remembered 4xx answers (memory only), at most this many: the oldest go first.
MAX_VOLATILE = 10_000


@dataclass(frozen=True, slots=True)
class Record:
    key: str  # "TOKEN-NAME:KEY"
    fingerprint: str
    status: int
    body: dict[str, Any]
    expires: float
    # The queue IDs of the messages the answer reports (checked at start-up).
    qids: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "key": self.key,
                "fingerprint": self.fingerprint,
                "status": self.status,
                "body": self.body,
                "expires": self.expires,
                "qids": list(self.qids),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        d = json.loads(raw)
        return cls(
            str(d["key"]),
            str(d["fingerprint"]),
            int(d["status"]),
            dict(d["body"]),
            float(d["expires"]),
            tuple(str(q) for q in d.get("qids", ())),
        )


def fingerprint(method: str, path: str, media_type: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), media_type.encode()):
        digest.update(part + b"\0")
    digest.update(body)
    return digest.hexdigest()


def file_name(key: str, suffix: str = RECORD) -> str:
    # Keys are any printable text the client chose: the file is named by their hash.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest() + suffix


class Conflict(RelayError):
    """A request with this key is in flight (409)."""


class QueuedMessages(Protocol):
    """What start-up needs of the spool to settle a pending record."""

    def key_of(self, qid: str) -> str | None:
        """The Idempotency-Key in the envelope of ``qid``; None when it is not queued."""

    def remove(self, qid: str) -> None:
        """Remove a message that was never acknowledged."""


class IdempotencyStore:
    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.dir = root / DIRNAME
        self.clock = clock
        self._records: dict[str, Record] = {}
        self._in_flight: set[str] = set()
        # Keys of the records kept in memory only (4xx answers), oldest first.
        self._volatile: dict[str, None] = {}
        self._fd: int | None = None
        self._sync: safeio.DirectorySync | None = None

    def open(self, queued: QueuedMessages | None = None) -> None:
        """Create the directory, settle the pending records against ``queued`` (see the
        module's docstring) and read the records back. Blocking: at start-up, before
        delivery starts, or in an executor."""
        if self._fd is not None:
            return
        self.dir.mkdir(mode=0o750, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        names = sorted(os.listdir(self.dir))
        settled = False
        for name in names:
            if name.endswith(PENDING):
                self._settle(fd, name, queued)
                settled = True
        if settled:
            safeio.fsync_dir(fd)
        now = self.clock()
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(RECORD):
                continue
            path = self.dir / name
            record = _read(path)
            if record is None:
                continue
            if record.expires <= now:
                _unlink(path)
            else:
                self._records[record.key] = record
        self._sync = safeio.DirectorySync(fd)
        self._fd = fd

    def _settle(self, dir_fd: int, name: str, queued: QueuedMessages | None) -> None:
        """A record whose commit a crash interrupted: finish it if every message it
        names is durable, else take back the part that is (never acknowledged)."""
        path = self.dir / name
        record = _read(path)
        if record is None:
            return
        if queued is None:
            _unlink(path)
            return
        present = [q for q in record.qids if queued.key_of(q) == record.key]
        if record.qids and len(present) == len(record.qids):
            os.rename(name, file_name(record.key), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            log.info(
                "idempotency key of %s recovered: its commit had finished (%d message(s))",
                ", ".join(record.qids),
                len(present),
            )
            return
        for qid in present:
            queued.remove(qid)
        _unlink(path)
        if present:
            log.warning(
                "%s: removed, never acknowledged: a crash interrupted the commit of the "
                "request that sent it (%d of its %d message(s) were on disk)",
                ", ".join(present),
                len(present),
                len(record.qids),
            )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def begin(self, key: str) -> Record | None:
        """The record to replay for ``key``, or None after marking it in flight (the
        caller must :meth:`finish` or :meth:`abandon` it). Raises Conflict. Called as
        soon as the request's header is read, so a second request with the key is
        refused even while the first one's body is still arriving."""
        record = self._records.get(key)
        if record is not None and record.expires <= self.clock():
            self._forget(key)
            record = None
        if record is not None:
            return record
        if key in self._in_flight:
            raise Conflict()
        self._in_flight.add(key)
        return None

    def prepare(self, record: Record) -> Pending:
        """Write ``record`` as pending (page cache only). Raises OSError."""
        assert self._fd is not None and self._sync is not None
        name = file_name(record.key, PENDING)
        try:
            fd = safeio.create_file(self._fd, name, record.to_json())
        except FileExistsError:  # left by a request whose commit failed
            os.unlink(name, dir_fd=self._fd)
            fd = safeio.create_file(self._fd, name, record.to_json())
        return Pending(record, self._fd, self._sync, fd)

    def finish(self, record: Record, *, durable: bool) -> None:
        """The answer is known: replay it from now on (``durable``: its file was
        committed; else it is remembered in memory, a bounded number of them)."""
        self._in_flight.discard(record.key)
        self._records[record.key] = record
        if not durable:
            self._volatile[record.key] = None
            while len(self._volatile) > MAX_VOLATILE:
                old = next(iter(self._volatile))
                del self._volatile[old]
                self._records.pop(old, None)
        self._purge_some()

    def abandon(self, key: str) -> None:
        """No answer worth replaying (a 5xx: the client should try again)."""
        self._in_flight.discard(key)

    def _purge_some(self) -> None:
        """Drop expired records, a few per answer (no timer needed)."""
        now = self.clock()
        for key in list(itertools.islice(self._records, 8)):
            if self._records[key].expires <= now:
                self._forget(key)

    def _forget(self, key: str) -> None:
        self._records.pop(key, None)
        if self._volatile.pop(key, 0) is None:
            return  # never written to disk
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(file_name(key), dir_fd=self._fd)


class Pending:
    """A record written as pending by :meth:`IdempotencyStore.prepare`: synced beside
    its messages, then committed once they are durable, or discarded."""

    def __init__(
        self, record: Record, dir_fd: int, dir_sync: safeio.DirectorySync, fd: int
    ) -> None:
        self.record = record
        self._dir_fd = dir_fd
        self._dir_sync = dir_sync
        self._fd: int | None = fd
        self._renamed = False

    def sync(self) -> None:
        """Make it durable as pending (blocks: in the executor, beside the messages'
        fsyncs). Raises OSError."""
        try:
            assert self._fd is not None
            os.fsync(self._fd)
            self._dir_sync.sync()
        finally:
            self._close()

    def commit(self) -> None:
        """The commit point, once every message is durable: pending becomes the record
        (blocks: in the executor). Raises OSError."""
        self._close()
        os.rename(
            file_name(self.record.key, PENDING),
            file_name(self.record.key),
            src_dir_fd=self._dir_fd,
            dst_dir_fd=self._dir_fd,
        )
        self._renamed = True
        self._dir_sync.sync()

    def discard(self) -> None:
        """Take it back: its messages were not committed (nor acknowledged)."""
        self._close()
        name = file_name(self.record.key, RECORD if self._renamed else PENDING)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self._dir_fd)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read(path: Path) -> Record | None:
    """The record in ``path``; None (and the file removed, with a warning) if unreadable."""
    try:
        return Record.from_json(path.read_bytes())
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("idempotency record %s unreadable (%s): removed", path.name, e)
        _unlink(path)
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
