"""When each queued message is due: the heap of ``(time, QID)`` and the fresh cache.

The heap is the only per-message memory while a message waits, so a large queue stays
small in RAM, and the delivery loop sleeps until its head (no wake-up per message: a
million scheduled sends cost no CPU while they wait). ``due`` holds the one valid entry
per QID; an entry whose time differs (superseded by a flush, or the message held,
deleted, canceled or rescheduled) is skipped when popped. Messages just received are
kept in memory for their first attempt (``fresh``), up to ``FRESH_BYTES`` of data.
"""

from __future__ import annotations

import asyncio
import heapq

from smtprelay.envelope import Envelope

# Messages just received are kept in memory for their first attempt (no re-reading of
# what was written a moment ago), up to this many bytes of message data in all.
FRESH_BYTES = 64 * 1024 * 1024


class Schedule:
    def __init__(self) -> None:
        self.heap: list[tuple[float, str]] = []
        self.due: dict[str, float] = {}
        # Taken off the heap and not finished (under attempt, parked, in a rate limiter's
        # line). With ``due`` it makes the known QIDs -- never scheduled twice -- without a
        # third table of every queued QID (a set of a million was 32 MB).
        self.taken: set[str] = set()
        self.wakeup = asyncio.Event()  # set when the heap's head may have moved
        self.fresh: dict[str, tuple[Envelope, bytes]] = {}
        self.fresh_bytes = 0

    def __len__(self) -> int:
        return len(self.due) + len(self.taken)  # disjoint: push and pop move a QID across

    def __contains__(self, qid: str) -> bool:
        """Known: waiting in the heap, or taken off it and not finished."""
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
        heapq.heappush(self.heap, (due, qid))
        self.wakeup.set()

    def pop(self) -> tuple[float, str] | None:
        """The head of the heap if it is a valid entry (None: superseded, skip it); the
        QID stays known (taken) until :meth:`forget` or another :meth:`push`."""
        due, qid = heapq.heappop(self.heap)
        if self.due.get(qid) != due:
            return None
        del self.due[qid]
        self.taken.add(qid)
        return due, qid

    def forget(self, qid: str) -> None:
        """The message is finished, held or gone: no longer scheduled nor taken."""
        self.due.pop(qid, None)
        self.taken.discard(qid)

    def next_due(self) -> float | None:
        return self.heap[0][0] if self.heap else None

    def replace(self, due: dict[str, float]) -> None:
        """A new set of due times (a flush of everything): the heap rebuilt from them."""
        self.due = due
        self.taken.difference_update(due)
        self.heap = [(when, qid) for qid, when in due.items()]
        heapq.heapify(self.heap)
        self.wakeup.set()

    def compact(self) -> None:
        """Drop superseded entries once they outnumber the valid ones."""
        if len(self.heap) > 2 * len(self.due) + 1024:
            self.heap = [(when, qid) for qid, when in self.due.items()]
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
