"""Webhook endpoints and their outbox: which events each still has to receive, when.

An outbox row is written in the same transaction as its event
(:meth:`smtprelay.events.store.EventStore.commit`) and deleted only once the receiver
answered 2xx (or the event was given up), so a delivery survives ``kill -9`` and
restarts: at least once. Rows are read a page at a time, so a backlog of millions costs
disk, not memory. Every method runs on the database thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smtprelay.events.db import Transaction

# Errors kept per webhook for GET /v1/webhooks/{id}.
KEPT_ERRORS = 20


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    source: str  # "config" ([[webhooks]]) or "api" (POST /v1/webhooks)
    url: str
    events: tuple[str, ...]
    secrets: tuple[str, ...]  # whsec_...; several during a rotation
    allow_private: bool
    created: float
    disabled_at: float | None = None
    disabled_reason: str | None = None

    def public(self) -> dict[str, Any]:
        """As the API shows it: never the secret."""
        return {
            "id": self.id,
            "source": self.source,
            "url": self.url,
            "events": list(self.events),
            "allow_private": self.allow_private,
            "created_at": self.created,
            "disabled": self.disabled_at is not None,
            "disabled_at": self.disabled_at,
            "disabled_reason": self.disabled_reason,
        }


@dataclass(frozen=True, slots=True)
class Due:
    seq: int
    attempts: int
    event_id: str
    body: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class Settled:
    """The results of one page of attempts for one webhook."""

    delivered: Sequence[int] = ()
    retry: Sequence[tuple[int, int, float]] = ()  # (seq, attempts so far, next_at)
    given_up: Sequence[int] = ()
    errors: Sequence[tuple[float, str, str]] = ()  # (when, event id, what)


_COLUMNS = "id, source, url, events, secrets, allow_private, created, disabled_at, disabled_reason"


def _endpoint(row: Sequence[Any]) -> Endpoint:
    return Endpoint(
        row[0],
        row[1],
        row[2],
        tuple(json.loads(row[3])),
        tuple(json.loads(row[4])),
        bool(row[5]),
        row[6],
        row[7],
        row[8],
    )


class Outbox:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # --- endpoints ------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM webhooks ORDER BY created, id")
        return [_endpoint(r) for r in rows]

    def get(self, webhook: str) -> Endpoint | None:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM webhooks WHERE id = ?", (webhook,)
        ).fetchone()
        return _endpoint(row) if row is not None else None

    def put(self, e: Endpoint) -> None:
        """Add, or update what the config says of one (its disabled state stays)."""
        self.conn.execute(
            "INSERT INTO webhooks (id, source, url, events, secrets, allow_private, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "events = excluded.events, secrets = excluded.secrets, "
            "allow_private = excluded.allow_private",
            (
                e.id,
                e.source,
                e.url,
                json.dumps(list(e.events)),
                json.dumps(list(e.secrets)),
                int(e.allow_private),
                e.created,
            ),
        )

    def sync_config(self, configured: Sequence[Endpoint]) -> None:
        """The [[webhooks]] of the config file now: add or update them, forget the rest
        of the config ones (and their backlog)."""
        keep = {e.id for e in configured}
        with Transaction(self.conn) as c:
            for e in configured:
                self.put(e)
            for (webhook,) in c.execute(
                "SELECT id FROM webhooks WHERE source = 'config'"
            ).fetchall():
                if webhook not in keep:
                    self._forget(c, webhook)

    def remove(self, webhook: str) -> bool:
        with Transaction(self.conn) as c:
            return self._forget(c, webhook)

    def _forget(self, c: sqlite3.Connection, webhook: str) -> bool:
        c.execute("DELETE FROM outbox WHERE webhook = ?", (webhook,))
        c.execute("DELETE FROM webhook_errors WHERE webhook = ?", (webhook,))
        return c.execute("DELETE FROM webhooks WHERE id = ?", (webhook,)).rowcount > 0

    def disable(self, webhook: str, reason: str, now: float) -> None:
        """The receiver said 410 Gone: no more deliveries, its backlog dropped."""
        with Transaction(self.conn) as c:
            c.execute(
                "UPDATE webhooks SET disabled_at = ?, disabled_reason = ? WHERE id = ?",
                (now, reason, webhook),
            )
            c.execute("DELETE FROM outbox WHERE webhook = ?", (webhook,))

    # --- deliveries -----------------------------------------------------------------

    def due(self, webhook: str, now: float, limit: int) -> list[Due]:
        rows = self.conn.execute(
            "SELECT o.event, o.attempts, e.id, e.body, e.ts FROM outbox o "
            "JOIN events e ON e.seq = o.event WHERE o.webhook = ? AND o.next_at <= ? "
            "ORDER BY o.next_at, o.event LIMIT ?",
            (webhook, now, limit),
        ).fetchall()
        return [Due(*row) for row in rows]

    def next_due(self, webhook: str) -> float | None:
        row = self.conn.execute(
            "SELECT MIN(next_at) FROM outbox WHERE webhook = ?", (webhook,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def settle(self, webhook: str, result: Settled) -> None:
        with Transaction(self.conn) as c:
            c.executemany(
                "DELETE FROM outbox WHERE webhook = ? AND event = ?",
                [(webhook, seq) for seq in [*result.delivered, *result.given_up]],
            )
            c.executemany(
                "UPDATE outbox SET attempts = ?, next_at = ? WHERE webhook = ? AND event = ?",
                [(attempts, at, webhook, seq) for seq, attempts, at in result.retry],
            )
            if result.errors:
                c.executemany(
                    "INSERT INTO webhook_errors (webhook, ts, event_id, error) VALUES (?, ?, ?, ?)",
                    [(webhook, *error) for error in result.errors],
                )
                c.execute(
                    "DELETE FROM webhook_errors WHERE webhook = ? AND rowid NOT IN "
                    "(SELECT rowid FROM webhook_errors WHERE webhook = ? "
                    "ORDER BY ts DESC LIMIT ?)",
                    (webhook, webhook, KEPT_ERRORS),
                )

    def backlog(self) -> dict[str, int]:
        """Outbox rows per webhook (an index-only count)."""
        rows = self.conn.execute("SELECT webhook, COUNT(*) FROM outbox GROUP BY webhook")
        return {webhook: int(n) for webhook, n in rows}

    def backlog_of(self, webhook: str) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE webhook = ?", (webhook,)
        ).fetchone()
        return int(row[0])

    def errors(self, webhook: str, limit: int = 10) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT ts, event_id, error FROM webhook_errors "
            "WHERE webhook = ? ORDER BY ts DESC LIMIT ?",
            (webhook, limit),
        )
        return [{"at": ts, "event_id": event_id, "error": error} for ts, event_id, error in rows]
