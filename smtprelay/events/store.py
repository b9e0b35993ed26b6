"""The durable event log: writing a batch of facts as events (with their outbox rows),
reading it by cursor or by message, and pruning it after ``[events] retention``.

Every method runs on the database thread (:class:`smtprelay.events.db.Database`).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smtprelay.envelope import Envelope
from smtprelay.events import db
from smtprelay.events.db import Transaction
from smtprelay.events.model import Fact, MessageInfo, NewEvent, new_id, translate
from smtprelay.events.sequence import NO_MESSAGE, Sequences
from smtprelay.events.types import TYPES, matches
from smtprelay.maillog import Event

# Message infos kept in memory for the events that follow their arrival; older ones are
# read back from the messages table (e.g. a message deferred for hours, or a restart).
INFO_CACHE = 10_000
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Subscriber:
    """An enabled webhook, as the writer sees it: which events get outbox rows."""

    id: str
    patterns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Written:
    events: int
    by_type: Counter[str]
    webhooks: frozenset[str]  # the webhooks that got new outbox rows


class EventStore:
    def __init__(
        self, conn: sqlite3.Connection, load: Callable[[str], Envelope] | None = None
    ) -> None:
        self.conn = conn
        # The spool's envelope of a message whose arrival was logged but never noted
        # (a path that queues without telling the events stage); raises OSError or
        # ValueError when it is gone.
        self.load = load
        self._infos: OrderedDict[str, MessageInfo] = OrderedDict()
        self._batch: dict[str, MessageInfo | None] = {}  # read ahead for one commit
        self.sequences = Sequences()

    # --- writing --------------------------------------------------------------------

    def commit(
        self,
        facts: Sequence[Fact],
        notes: Mapping[str, MessageInfo],
        subscribers: Sequence[Subscriber],
        now: float,
    ) -> Written:
        """One transaction: the messages' infos, the events ``facts`` are, and an
        outbox row per event for each webhook that subscribes to its type.

        What the batch needs is read, and what it made is written, a few statements for
        the whole batch (see events.sequence: each statement costs a wait for the GIL
        under load), not several per event."""
        by_type: Counter[str] = Counter()
        touched: set[str] = set()
        try:
            with Transaction(self.conn) as c:
                for qid, noted in notes.items():
                    self._keep(c, qid, noted, now)
                qids = [fact.qid for fact in facts if fact.qid]
                self._prefetch(c, qids)
                self.sequences.prefetch(c, qids)
                rows: list[tuple[str, str, str | None, float, str]] = []
                for fact in facts:
                    rows += self._events(c, fact, now)
                self.sequences.write(c, now)
                self._insert(c, rows, subscribers, now, by_type, touched)
        except BaseException:
            self.sequences.forget()  # rolled back: numbers cached but never written
            raise
        finally:
            self._batch.clear()
        return Written(sum(by_type.values()), by_type, frozenset(touched))

    def _events(
        self, c: sqlite3.Connection, fact: Fact, now: float
    ) -> list[tuple[str, str, str | None, float, str]]:
        """The rows of the events of one fact (id, type, qid, time, body)."""
        info = self._info(c, fact.qid) if fact.qid else None
        if info is None and fact.qid and fact.event == Event.QUEUED:
            info = self._from_spool(c, fact.qid, now)
        if fact.event == Event.NOTICE:
            self._mark_notice(c, str(fact.fields.get("notice_qid")), now)
        rows = []
        for kind, data in translate(fact, info):
            data["sequence"] = (
                self.sequences.next(c, fact.qid, data.get("recipient")) if fact.qid else NO_MESSAGE
            )
            event = NewEvent(new_id(), kind, fact.time, fact.qid, data)
            body = json.dumps(event.to_json(), ensure_ascii=False)
            rows.append((event.id, kind, fact.qid, fact.time, body))
        return rows

    def _insert(
        self,
        c: sqlite3.Connection,
        rows: list[tuple[str, str, str | None, float, str]],
        subscribers: Sequence[Subscriber],
        now: float,
        by_type: Counter[str],
        touched: set[str],
    ) -> None:
        """The events, and their outbox rows (counted in ``by_type`` and ``touched``)."""
        for chunk in db.chunks(rows):
            cur = db.insert(c, "events (id, type, qid, ts, body)", chunk)
            # One writer, one statement: AUTOINCREMENT numbered these rows one after
            # the other, ending at lastrowid.
            first = int(cur.lastrowid or 0) - len(chunk) + 1
            outbox: list[tuple[str, int, float]] = []
            for seq, (_, kind, _, _, _) in enumerate(chunk, start=first):
                by_type[kind] += 1
                for sub in subscribers:
                    if matches(sub.patterns, kind):
                        outbox.append((sub.id, seq, now))
                        touched.add(sub.id)
            for part in db.chunks(outbox):
                db.insert(c, "outbox (webhook, event, next_at)", part)

    def _keep(self, c: sqlite3.Connection, qid: str, info: MessageInfo, now: float) -> None:
        c.execute(
            "INSERT INTO messages (qid, info, ts) VALUES (?, ?, ?) ON CONFLICT (qid) "
            "DO UPDATE SET info = excluded.info",
            (qid, json.dumps(info.to_json()), now),
        )
        self._cache(qid, info)

    def _cache(self, qid: str, info: MessageInfo) -> None:
        self._infos[qid] = info
        self._infos.move_to_end(qid)
        while len(self._infos) > INFO_CACHE:
            self._infos.popitem(last=False)

    def _prefetch(self, c: sqlite3.Connection, qids: list[str]) -> None:
        """The infos of ``qids`` that are not cached, for this batch; a qid without one
        is noted as such."""
        missing = [q for q in dict.fromkeys(qids) if q not in self._infos]
        for chunk in db.chunks(missing):
            self._batch.update(dict.fromkeys(chunk))
            for qid, info in db.select_by_qid(c, "json_array(qid, info)", "messages", chunk):
                self._batch[qid] = MessageInfo.from_json(json.loads(info))

    def _info(self, c: sqlite3.Connection, qid: str) -> MessageInfo | None:
        info = self._infos.get(qid)
        if info is not None:
            return info
        if qid in self._batch:
            return self._batch[qid]
        row = c.execute("SELECT info FROM messages WHERE qid = ?", (qid,)).fetchone()
        if row is None:
            return None
        info = MessageInfo.from_json(json.loads(row[0]))
        self._cache(qid, info)
        return info

    def _from_spool(self, c: sqlite3.Connection, qid: str, now: float) -> MessageInfo | None:
        if self.load is None:
            return None
        try:
            info = MessageInfo.of(self.load(qid))
        except (OSError, ValueError):
            return None  # already delivered and removed, or unreadable: qid only
        self._keep(c, qid, info, now)
        return info

    def _mark_notice(self, c: sqlite3.Connection, qid: str, now: float) -> None:
        # The notice's own "queued" and deliveries follow: they are not events.
        info = self._info(c, qid) or MessageInfo()
        info.notice = True
        self._keep(c, qid, info, now)

    # --- reading --------------------------------------------------------------------

    def page(
        self, after: int, limit: int, types: Iterable[str] = (), qid: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Events after position ``after`` in order, and the cursor for the next page:
        the last position returned, or -- when the page is not full -- the last position
        that exists now (everything up to it was looked at; later events get higher
        positions, as one thread commits them in order), so nothing is skipped or
        repeated whatever the filters."""
        limit = max(1, min(limit, MAX_PAGE))
        where, args = ["seq > ?"], [after]
        if qid is not None:
            where.append("qid = ?")
            args.append(qid)  # type: ignore[arg-type]
        exact = [t for t in types if t in TYPES]
        prefixes = [t[:-1] for t in types if t.endswith(".*")]
        if exact or prefixes:
            ors = ["type = ?"] * len(exact) + ["type LIKE ?"] * len(prefixes)
            where.append("(" + " OR ".join(ors) + ")")
            args += [*exact, *[p + "%" for p in prefixes]]  # type: ignore[list-item]
        c = self.conn
        c.execute("BEGIN")
        try:
            rows = c.execute(
                f"SELECT seq, body FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                (*args, limit),
            ).fetchall()
            if len(rows) == limit:
                cursor = int(rows[-1][0])
            else:
                top = c.execute("SELECT MAX(seq) FROM events").fetchone()[0]
                cursor = max(after, int(top or 0))
        finally:
            c.execute("COMMIT")
        return [json.loads(body) for _, body in rows], cursor

    def count_for(self, qid: str) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM events WHERE qid = ?", (qid,)).fetchone()
        return int(row[0])

    # --- retention ------------------------------------------------------------------

    def prune(self, horizon: float) -> int:
        """Forget events (and their outbox rows) and message infos older than
        ``horizon``; returns how many events went."""
        with Transaction(self.conn) as c:
            top = c.execute("SELECT MAX(seq) FROM events WHERE ts < ?", (horizon,)).fetchone()[0]
            if top is None:
                gone = 0
            else:
                c.execute(
                    "DELETE FROM outbox WHERE event <= ? AND event IN "
                    "(SELECT seq FROM events WHERE ts < ?)",
                    (top, horizon),
                )
                gone = c.execute("DELETE FROM events WHERE ts < ?", (horizon,)).rowcount
            c.execute("DELETE FROM messages WHERE ts < ?", (horizon,))
            c.execute("DELETE FROM sequences WHERE ts < ?", (horizon,))
            c.execute("DELETE FROM webhook_errors WHERE ts < ?", (horizon,))
        return gone
