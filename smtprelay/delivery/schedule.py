"""When each queued message is due: the line of those due already, the heap of
``(time, QID)`` due in the next seconds, the buckets of those due later, and the fresh
cache.

These are the only per-message memory while a message waits, so a large queue stays
small in RAM, and the delivery loop sleeps until their head (no wake-up per message: a
million scheduled sends cost no CPU while they wait). ``due`` holds the one valid time
per QID; an entry that no longer matches it (superseded by a flush, or the message held,
deleted, canceled or rescheduled) is skipped when met.

A message due later than ``NEAR`` seconds from now waits as a QID in the bucket of its
second (``far``), 8 bytes, not as a heap tuple (64 bytes with its slot): with a million
queued for a dead next hop, the deferrals' retry times were 64 MB of tuples. A bucket
moves into the heap, in exact order, ``NEAR`` seconds before its second begins.
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
# Seconds ahead within which a due time is kept exactly (the heap); later ones wait in
# their second's bucket until then.
NEAR = 2
# Whole seconds whose shared past-time object (Schedule._past) is kept at most; then
# the table starts again (it stays a few hundred KB).
PAST_SECONDS = 4096


class Schedule:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.heap: list[tuple[float, str]] = []
        # Pushed when already due (a queue read at start-up, a flush, a retry whose time
        # has passed): first in, first out, their times in ``due``. A heap entry is a
        # tuple of its own (56 bytes, and 8 for its slot); a million messages read at
        # start-up, all due, took 64 MB that way.
        self.ready: deque[str] = deque()
        # Due later than NEAR s ahead: QIDs by the second they are due in, the seconds
        # in a heap of their own; ``far_count`` entries in all (superseded ones too).
        self.far: dict[int, list[str]] = {}
        self.far_seconds: list[int] = []
        self.far_count = 0
        # The one due-time object of each bucket's second, for the retries due on it
        # (backoff.retry_at: whole seconds): a float of its own per deferred message was
        # 24 bytes each, 13 MB with 540,000 deferred.
        self.far_times: dict[int, float] = {}
        self.past_times: dict[int, float] = {}  # likewise for times already due (_past)
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
        now = self.clock()
        if due <= now:
            due = self._past(due)
        elif due >= now + NEAR and int(due) == due:
            due = self.far_times.setdefault(int(due), due)
        self.due[qid] = due
        self._place(qid, due, now)
        self.wakeup.set()

    def _past(self, due: float) -> float:
        """A time already past, as the shared object of its whole second. Such a QID
        waits in the ready line (first in, first out) and its time only has to stay in
        the past; a float of its own per message was 32 MB with a million read at
        start-up, and each message let go from a parked line had one more."""
        second = int(due)
        shared = self.past_times.get(second)
        if shared is None:
            if len(self.past_times) >= PAST_SECONDS:
                self.past_times.clear()  # the old ones stay with the QIDs that hold them
            shared = self.past_times[second] = float(second)
        return shared

    def _place(self, qid: str, due: float, now: float) -> None:
        if due <= now:
            self.ready.append(qid)
        elif due < now + NEAR:
            heapq.heappush(self.heap, (due, qid))
        else:
            second = int(due)
            bucket = self.far.get(second)
            if bucket is None:
                bucket = self.far[second] = []
                heapq.heappush(self.far_seconds, second)
            bucket.append(qid)
            self.far_count += 1

    def pop(self) -> tuple[float, str] | None:
        """The earliest entry if it is a valid one (None: superseded, skip it); the QID
        stays known (taken) until :meth:`forget` or another :meth:`push`. Called after
        :meth:`next_due` said it is due."""
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
        """The earliest due time; with only buckets left, the start of the first one's
        second (no later than any time in it; the bucket is in the heap by then)."""
        self._bring_near()
        qid = self._ready_head()
        head = self.heap[0][0] if self.heap else None
        if head is None and self.far_seconds:
            head = float(self.far_seconds[0])
        if qid is None:
            return head
        when = self.due[qid]
        return when if head is None or when < head else head

    def _bring_near(self) -> None:
        """The buckets of the seconds that begin within NEAR s go into the heap (the
        entries still valid: a QID whose time moved to another second is met there)."""
        seconds, far, due = self.far_seconds, self.far, self.due
        horizon = self.clock() + NEAR
        while seconds and seconds[0] <= horizon:
            second = heapq.heappop(seconds)
            bucket = far.pop(second)
            self.far_times.pop(second, None)
            self.far_count -= len(bucket)
            for qid in bucket:
                when = due.get(qid)
                if when is not None and int(when) == second:
                    heapq.heappush(self.heap, (when, qid))

    def _ready_head(self) -> str | None:
        """The first valid ready QID. Those before it that were taken since are dropped;
        one whose time is now ahead is placed again: moved to a later time (the heap or
        a bucket holds it already, and the copy is skipped as a duplicate when met) or the wall
        clock stepped back since it was pushed (the heap's entry is then its only one)."""
        ready, due, now = self.ready, self.due, self.clock()
        while ready:
            qid = ready[0]
            when = due.get(qid)
            if when is not None and when <= now:
                return qid
            ready.popleft()
            if when is not None:
                self._place(qid, when, now)
        return None

    def replace(self, due: dict[str, float]) -> None:
        """A new set of due times (a flush of everything): the schedule rebuilt."""
        self.due = due
        self.taken.difference_update(due)
        self._rebuild()
        self.wakeup.set()

    def compact(self) -> None:
        """Drop superseded entries once they outnumber the valid ones."""
        if len(self.heap) + len(self.ready) + self.far_count > 2 * len(self.due) + 1024:
            self._rebuild()

    def _rebuild(self) -> None:
        now = self.clock()
        due = self.due
        # In the heap's order: by time, then by QID (sorts are stable).
        by_qid = sorted(qid for qid, when in due.items() if when <= now)
        self.ready = deque(sorted(by_qid, key=due.__getitem__))
        self.heap = [(when, qid) for qid, when in due.items() if now < when < now + NEAR]
        heapq.heapify(self.heap)
        self.far, self.far_seconds, self.far_count, self.far_times = {}, [], 0, {}
        for qid, when in due.items():
            if when >= now + NEAR:
                self._place(qid, when, now)

    def keep_fresh(self, envelope: Envelope, data: bytes) -> None:
        if self.fresh_bytes + len(data) <= FRESH_BYTES:
            self.fresh[envelope.qid] = (envelope, data)
            self.fresh_bytes += len(data)

    def take_fresh(self, qid: str) -> tuple[Envelope, bytes] | None:
        fresh = self.fresh.pop(qid, None)
        if fresh is not None:
            self.fresh_bytes -= len(fresh[1])
        return fresh
