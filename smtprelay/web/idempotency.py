"""``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header) for the submission API.

A key is scoped to the token that sent it (``TOKEN-NAME:KEY``). The first request with
a key is *in flight* until it is answered; a second one meanwhile gets 409. Its answer
(status and body) is then replayed for every later request with the same key and the
same body (the SHA-256 of method, path, media type and body bytes); a different body
gets 422.

Durability: the answer of a request that queued mail is a small file in
``[spool] dir/idempotency/``, written and fsynced in the same commit as the message
files (after them: a crash between the two leaves a message without its record, which a
retry may send again, never a record without its message) and before the reply. So a
crash between the fsync and the reply replays after the restart instead of sending
twice. Records are kept ``[http] idempotency_retention``, and for scheduled mail at
least until its send time; the files are read back at start-up and expired ones
removed. Answers that queued nothing (4xx) are remembered in memory only: nothing was
sent, so a retry after a restart can do no harm.
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
from typing import Any

from smtprelay import safeio
from smtprelay.errors import RelayError

log = logging.getLogger("smtprelay.http")

DIRNAME = "idempotency"
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

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "key": self.key,
                "fingerprint": self.fingerprint,
                "status": self.status,
                "body": self.body,
                "expires": self.expires,
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
        )


def fingerprint(method: str, path: str, media_type: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), media_type.encode()):
        digest.update(part + b"\0")
    digest.update(body)
    return digest.hexdigest()


def file_name(key: str) -> str:
    # Keys are any printable text the client chose: the file is named by their hash.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest() + ".json"


class Conflict(RelayError):
    """A request with this key is in flight (409)."""


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

    def open(self) -> None:
        """Create the directory and read the records back (blocking: at start-up, or
        in an executor)."""
        if self._fd is not None:
            return
        self.dir.mkdir(mode=0o750, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        now = self.clock()
        for name in os.listdir(self.dir):
            path = self.dir / name
            try:
                record = Record.from_json(path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError) as e:
                # A partial write of a crash (never acknowledged), or a stray file.
                log.warning("idempotency record %s unreadable (%s): removed", name, e)
                _unlink(path)
                continue
            if record.expires <= now:
                _unlink(path)
            else:
                self._records[record.key] = record
        self._sync = safeio.DirectorySync(fd)
        self._fd = fd

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

    def prepare(self, record: Record) -> int:
        """Write ``record`` (page cache only) and return its descriptor for
        :meth:`commit`. Raises OSError."""
        assert self._fd is not None
        name = file_name(record.key)
        try:
            return safeio.create_file(self._fd, name, record.to_json())
        except FileExistsError:  # an expired record's file not removed yet
            os.unlink(name, dir_fd=self._fd)
            return safeio.create_file(self._fd, name, record.to_json())

    def commit(self, fd: int) -> None:
        """Make a prepared record durable (blocks: in the executor, after the messages'
        fsync)."""
        assert self._sync is not None
        try:
            os.fsync(fd)
            self._sync.sync()
        finally:
            os.close(fd)

    def discard(self, record: Record) -> None:
        """Take back a prepared record whose messages were not committed."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(file_name(record.key), dir_fd=self._fd)

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


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
