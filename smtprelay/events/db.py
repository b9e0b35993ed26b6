"""The event store's one SQLite database, used from one thread.

Why SQLite in WAL mode and not append-only files: the event API needs three orders at
once -- by position (the cursor), by message (``/v1/messages/{id}/events``) and by due
time per webhook (the outbox) -- and pruning by age. With files each would be an index
of our own to keep consistent across crashes; SQLite gives them as B-tree indexes, and
one transaction writes a batch of events *and* their outbox rows, so a ``kill -9``
leaves either both or neither. WAL with ``synchronous=FULL`` fsyncs the log at every
commit; a commit takes every event recorded since the last one (group commit), so the
cost is one fsync per batch, not per event. ``AUTOINCREMENT`` keeps positions strictly
increasing even after old rows are pruned, so a cursor never sees a number twice.

Every call runs on one dedicated thread (:meth:`Database.run`), so the connection is
never shared and writes are serialised without locks; the event loop never waits on
the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    qid TEXT,
    ts REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_qid ON events (qid, seq);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS messages (
    qid TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ts ON messages (ts);
-- Per-recipient sequence counters (events.sequence); recipient '' is the message's own.
CREATE TABLE IF NOT EXISTS sequences (
    qid TEXT NOT NULL,
    recipient TEXT NOT NULL,
    last INTEGER NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (qid, recipient)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sequences_ts ON sequences (ts);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secrets TEXT NOT NULL,
    allow_private INTEGER NOT NULL,
    created REAL NOT NULL,
    disabled_at REAL,
    disabled_reason TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    webhook TEXT NOT NULL,
    event INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    PRIMARY KEY (webhook, event)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (webhook, next_at);
CREATE TABLE IF NOT EXISTS webhook_errors (
    webhook TEXT NOT NULL,
    ts REAL NOT NULL,
    event_id TEXT,
    error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_errors_by ON webhook_errors (webhook, ts);
"""


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")
        self.conn: sqlite3.Connection | None = None

    def open(self) -> sqlite3.Connection:
        """(On the database thread.) Open or create the file and its tables."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        self.path.chmod(0o600)  # API webhooks' secrets are in it
        self.conn = conn
        return conn

    def connection(self) -> sqlite3.Connection:
        assert self.conn is not None, "the event store is not open"
        return self.conn

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """(On the database thread.)"""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class Transaction:
    """``with Transaction(conn):`` BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


# Rows per statement when a batch is read or written many rows at a time: each statement
# lets go of the GIL while SQLite works, and under load getting it back waits a switch
# interval behind the busy event loop (2.65 ms instead of 56 us per event when it was one
# statement per event beside one busy thread). 500 rows of a few parameters each stays
# far under SQLite's limit of 32,766 parameters.
ROWS_PER_STATEMENT = 500


def chunks(items: Sequence[T], size: int = ROWS_PER_STATEMENT) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert(
    c: sqlite3.Connection, into: str, rows: Sequence[Sequence[object]], then: str = ""
) -> sqlite3.Cursor:
    """``INSERT INTO {into} VALUES (...), (...) {then}``: ``rows`` in one statement."""
    marks = "(" + ", ".join("?" * len(rows[0])) + ")"
    return c.execute(
        f"INSERT INTO {into} VALUES {','.join([marks] * len(rows))} {then}",
        [value for row in rows for value in row],
    )


def select_by_qid(
    c: sqlite3.Connection, row: str, table: str, qids: Sequence[str]
) -> list[list[Any]]:
    """``row`` (a ``json_array(...)`` of columns) of every row of ``table`` whose qid is
    in ``qids``, gathered into one JSON array by SQLite: one result row, so one step."""
    marks = ",".join("?" * len(qids))
    (found,) = c.execute(
        f"SELECT json_group_array({row}) FROM {table} WHERE qid IN ({marks})", qids
    ).fetchone()
    rows: list[list[Any]] = json.loads(found)
    return rows
