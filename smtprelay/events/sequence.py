"""The ``sequence`` number of an event: its place among the events of one recipient.

Issue 13 asks for "a per-recipient ``sequence`` number so receivers can order them".
A recipient's events are its own (``recipient.*``) *and* those of its message
(``message.received``/``scheduled``, ``message.canceled``, ``notice.sent``, a
``message.rejected`` after a queue ID exists), which concern every recipient. So:

* a recipient event gets one more than the highest number that recipient has seen,
  its own events and the message's alike;
* a message-level event gets one more than the highest number of *any* of the
  message's recipients (it comes after all of them), and every recipient counts on
  from there;
* an event without a queue ID (a ``message.rejected`` before the message was queued)
  belongs to no message: sequence 0.

Sorting one recipient's events together with its message's events by ``sequence`` gives
the order they happened; two recipients' own numbers are independent (``a`` deferred
2, ``b`` delivered 2, ``a`` delivered 3). One recipient has one message: 1, 2, 3 ...

The counters live in the ``sequences`` table, written in the transaction that writes the
events, so a restart or ``kill -9`` continues them; an LRU of recent messages saves the
read. Every method runs on the database thread.

A batch reads the counters it lacks (:meth:`Sequences.prefetch`) and writes the ones it
changed (:meth:`Sequences.write`) many rows per statement, never one per event (why:
``db.ROWS_PER_STATEMENT``).
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable

from smtprelay.events import db

# Messages whose counters are kept in memory between batches; older ones are read back.
CACHE = 10_000
# The key of the message-level counter of a message (no address is empty).
MESSAGE = ""
NO_MESSAGE = 0


class Sequences:
    def __init__(self) -> None:
        self._cache: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._changed: dict[tuple[str, str], int] = {}  # (qid, key) -> value, unwritten

    def prefetch(self, c: sqlite3.Connection, qids: Iterable[str]) -> None:
        """Read the counters of ``qids`` that are not cached (the batch's events then
        count in memory)."""
        missing = [q for q in dict.fromkeys(qids) if q not in self._cache]
        for chunk in db.chunks(missing):
            found: dict[str, dict[str, int]] = {q: {} for q in chunk}
            rows = db.select_by_qid(c, "json_array(qid, recipient, last)", "sequences", chunk)
            for qid, recipient, last in rows:
                found[qid][recipient] = int(last)
            for qid, last_seq in db.select_by_qid(
                c, "json_array(qid, last_seq)", "messages", chunk
            ):
                # A message counted per message before this table existed: its numbers
                # go on from there, so none repeats.
                if not found[qid] and last_seq:
                    found[qid][MESSAGE] = int(last_seq)
            self._cache.update(found)

    def next(self, c: sqlite3.Connection, qid: str, recipient: str | None) -> int:
        """The next sequence of an event of ``qid`` (of ``recipient``, or message-level
        when None); written by :meth:`write` within the caller's transaction."""
        counters = self._counters(c, qid)
        if recipient is None:
            key, value = MESSAGE, max(counters.values(), default=0) + 1
        else:
            key = recipient.lower()  # one mailbox however its case was written
            value = max(counters.get(key, 0), counters.get(MESSAGE, 0)) + 1
        counters[key] = value
        self._changed[(qid, key)] = value
        return value

    def write(self, c: sqlite3.Connection, now: float) -> None:
        """The counters changed since the last write."""
        changed = [(q, k, v, now) for (q, k), v in self._changed.items()]
        self._changed.clear()
        for chunk in db.chunks(changed):
            db.insert(
                c,
                "sequences (qid, recipient, last, ts)",
                chunk,
                "ON CONFLICT (qid, recipient) DO UPDATE SET last = excluded.last, ts = excluded.ts",
            )
        while len(self._cache) > CACHE:
            self._cache.popitem(last=False)

    def forget(self) -> None:
        """After a rolled-back transaction: the cache may hold numbers never written."""
        self._cache.clear()
        self._changed.clear()

    def _counters(self, c: sqlite3.Connection, qid: str) -> dict[str, int]:
        counters = self._cache.get(qid)
        if counters is None:
            self.prefetch(c, [qid])
            counters = self._cache[qid]
        self._cache.move_to_end(qid)
        return counters
