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
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict

# Messages whose counters are kept in memory; older ones are read back from the table.
CACHE = 10_000
# The key of the message-level counter of a message (no address is empty).
MESSAGE = ""
NO_MESSAGE = 0


class Sequences:
    def __init__(self) -> None:
        self._cache: OrderedDict[str, dict[str, int]] = OrderedDict()

    def next(self, c: sqlite3.Connection, qid: str, recipient: str | None, now: float) -> int:
        """The next sequence of an event of ``qid`` (of ``recipient``, or message-level
        when None), counted in the table within the caller's transaction."""
        counters = self._counters(c, qid)
        if recipient is None:
            key, value = MESSAGE, max(counters.values(), default=0) + 1
        else:
            key = recipient.lower()  # one mailbox however its case was written
            value = max(counters.get(key, 0), counters.get(MESSAGE, 0)) + 1
        counters[key] = value
        c.execute(
            "INSERT INTO sequences (qid, recipient, last, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (qid, recipient) DO UPDATE SET last = excluded.last, ts = excluded.ts",
            (qid, key, value, now),
        )
        return value

    def forget(self) -> None:
        """After a rolled-back transaction: the cache may hold numbers never written."""
        self._cache.clear()

    def _counters(self, c: sqlite3.Connection, qid: str) -> dict[str, int]:
        counters = self._cache.get(qid)
        if counters is not None:
            self._cache.move_to_end(qid)
            return counters
        rows = c.execute("SELECT recipient, last FROM sequences WHERE qid = ?", (qid,))
        counters = {recipient: int(last) for recipient, last in rows}
        if not counters:
            # A message counted per message before this table existed: its numbers go on
            # from there, so none repeats.
            row = c.execute("SELECT last_seq FROM messages WHERE qid = ?", (qid,)).fetchone()
            if row is not None and row[0]:
                counters[MESSAGE] = int(row[0])
        self._cache[qid] = counters
        while len(self._cache) > CACHE:
            self._cache.popitem(last=False)
        return counters
