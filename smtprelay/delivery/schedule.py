"""When each queued message is due: the heap of ``(time, QID)``, the line of those due
already, and the fresh cache.

The heap and the ready line are the only per-message memory while a message waits, so a
large queue stays small in RAM, and the delivery loop sleeps until their head (no
wake-up per message: a million scheduled sends cost no CPU while they wait). ``due``
holds the one valid time per QID; an entry that no longer matches it (superseded by a
flush, or the message held, deleted, canceled or rescheduled) is skipped when met.
Messages just received are kept in memory for their first attempt (``fresh``), up to
``FRESH_BYTES`` of data.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable

from smtprelay.envelope import Envelope

# Messages just received are kept in memory for their first attempt (no re-reading of
# what was written a moment ago), up to this many bytes of message data in all.
FRESH_BYTES = 64 * 1024 * 1024


class Schedule:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.heap: list[tuple[float, str]] = []
        # Pushed when already due (a queue read at start-up, a flush, a retry whose time
        # has passed): first in, first out, their times in ``due``. A heap entry is a
        # tuple of its own (56 bytes, and 8 for its slot); a million messages read at
        # start-up, all due, took 64 MB that way.
        self.ready: deque[str] = deque()
        self.due: dict[str, float] = {}
        # Taken off the schedule and not finished (under attempt, parked, in a rate
        # limiter's line). With ``due`` it makes the known QIDs -- never scheduled twice --
        # without a third table of every queued QID (a set of a million was 32 MB).
        self.taken: set[str] = set()
        self.wakeup = asyncio.Event()  # set when the schedule's head may have moved
        self.fresh: dict[str, tuple[Envelope, bytes]] = {}
        self.fresh_bytes = 0

    def __len__(self) -> int:
        return len(self.due) + len(self.taken)  # disjoint: push and pop move a QID across

    def __contains__(self, qid: str) -> bool:
        """Known: waiting to be due, or taken off the schedule and not finished."""
        return qid in self.due or qid in self.taken

    def enqueue(self, qid: str, due: float) -> None:
        """Schedule ``qid`` at ``due`` unless it is scheduled or under attempt already."""
        if qid in self:
            return
        self.push(qid, due)

    def push(self, qid: str, due: float) -> None:
        """(Re)schedule a QID at ``due``; an earlier entry of it is superseded."""
        self.taken.discard(qid)
        self.due[qid] = due
        if due <= self.clock():
            self.ready.append(qid)
        else:
            heapq.heappush(self.heap, (due, qid))
        self.wakeup.set()

    def pop(self) -> tuple[float, str] | None:
        """The earliest entry if it is a valid one (None: superseded, skip it); the QID
        stays known (taken) until :meth:`forget` or another :meth:`push`."""
        qid = self._ready_head()
        if qid is not None and (not self.heap or self.due[qid] <= self.heap[0][0]):
            self.ready.popleft()
            due = self.due.pop(qid)
        elif self.heap:
            due, qid = heapq.heappop(self.heap)
            if self.due.get(qid) != due:
                return None
            del self.due[qid]
        else:
            return None
        self.taken.add(qid)
        return due, qid

    def forget(self, qid: str) -> None:
        """The message is finished, held or gone: no longer scheduled nor taken."""
        self.due.pop(qid, None)
        self.taken.discard(qid)

    def next_due(self) -> float | None:
        qid = self._ready_head()
        head = self.heap[0][0] if self.heap else None
        if qid is None:
            return head
        when = self.due[qid]
        return when if head is None or when < head else head

    def _ready_head(self) -> str | None:
        """The first valid ready QID. Those before it that were taken since are dropped;
        one whose time is now ahead goes to the heap: moved to a later time (the heap
        holds it already, and the copy is skipped as a duplicate when met) or the wall
        clock stepped back since it was pushed (the heap's entry is then its only one)."""
        ready, due, now = self.ready, self.due, self.clock()
        while ready:
            qid = ready[0]
            when = due.get(qid)
            if when is not None and when <= now:
                return qid
            ready.popleft()
            if when is not None:
                heapq.heappush(self.heap, (when, qid))
        return None

    def replace(self, due: dict[str, float]) -> None:
        """A new set of due times (a flush of everything): the schedule rebuilt."""
        self.due = due
        self.taken.difference_update(due)
        self._rebuild()
        self.wakeup.set()

    def compact(self) -> None:
        """Drop superseded entries once they outnumber the valid ones."""
        if len(self.heap) + len(self.ready) > 2 * len(self.due) + 1024:
            self._rebuild()

    def _rebuild(self) -> None:
        now = self.clock()
        due = self.due
        # In the heap's order: by time, then by QID (sorts are stable).
        by_qid = sorted(qid for qid, when in due.items() if when <= now)
        self.ready = deque(sorted(by_qid, key=due.__getitem__))
        self.heap = [(when, qid) for qid, when in due.items() if when > now]
        heapq.heapify(self.heap)

    def keep_fresh(self, envelope: Envelope, data: bytes) -> None:
        if self.fresh_bytes + len(data) <= FRESH_BYTES:
            self.fresh[envelope.qid] = (envelope, data)
            self.fresh_bytes += len(data)

    def take_fresh(self, qid: str) -> tuple[Envelope, bytes] | None:
        fresh = self.fresh.pop(qid, None)
        if fresh is not None:
            self.fresh_bytes -= len(fresh[1])
        return fresh
