"""Per-destination state: connection slots, lines of waiting and parked messages, and
destinations marked dead.

* Per-destination concurrency (``per_destination_concurrency``) under a global limit
  (``concurrency``). A destination slot is taken before a global one, so messages
  waiting for a busy destination never hold slots that others could use; and a
  destination with a long line of waiters gets further messages parked in a line of
  its own (QIDs only, out of the active set), each let go when one of its deliveries
  ends (fairness without re-reading a message every second while a backlog drains).
* Dead destinations: after ``DEAD_AFTER`` consecutive attempts in which no host of a
  destination could be reached, it is skipped for ``COOL_OFF`` seconds and its mail
  deferred without a wasted connection attempt each.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from smtprelay.replies import Reply

DEAD_AFTER = 3
COOL_OFF = 60.0
# Waiters per destination slot before further messages for it are parked.
PARK_AFTER = 4
# Parked messages let go in one turn of the event loop once their destination is free.
UNPARK_BURST = 256
UNREACHABLE = Reply(451, "4.4.1", "Destination unreachable")


@dataclass
class Dead:
    until: float
    reply: Reply


class Destinations:
    def __init__(self, concurrency: int, per_destination: int) -> None:
        self.per_destination = per_destination
        self.global_slots = asyncio.Semaphore(concurrency)
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.waiting: defaultdict[str, int] = defaultdict(int)
        # Messages parked behind a saturated destination, by route key. A QID counts as
        # parked while in parked_qids; deque entries of QIDs taken out since are skipped.
        # parked_qids also holds the QIDs waiting in a rate limiter's line (ratelimits.py),
        # so that the operator's actions find them the same way.
        self.parked: defaultdict[str, deque[str]] = defaultdict(deque)
        self.parked_qids: set[str] = set()
        self.let_go: set[str] = set()  # unparked, not attempted yet
        self.failures: defaultdict[str, int] = defaultdict(int)
        self.dead: dict[str, Dead] = {}

    @property
    def line_limit(self) -> int:
        """Waiters for one destination beyond which further messages are parked."""
        return PARK_AFTER * self.per_destination

    def full(self) -> set[str]:
        """Destinations whose line is full now."""
        limit = self.line_limit
        return {key for key, count in self.waiting.items() if count >= limit}

    def park(self, key: str, qid: str) -> None:
        self.parked[key].append(qid)
        self.parked_qids.add(qid)

    def unpark(self, key: str, push: Callable[[str], None], most: int = UNPARK_BURST) -> bool:
        """One delivery to ``key`` ended: let one parked message go (``push`` puts it
        back on the schedule); all of them once nothing waits for ``key`` (its route may
        have changed on reload), but at most ``most`` in one call: a line can hold a
        whole queue (a million messages behind one smarthost), and letting all of it go
        in one callback would hold the event loop for seconds. True when the rest is to
        be let go by another call, in a later turn of the loop."""
        line = self.parked.get(key)
        if line is None:
            return False
        freed, busy = 0, False
        while line and freed < most and not busy:
            qid = line.popleft()
            if qid in self.parked_qids:  # else taken out since (held, deleted, ...)
                self.parked_qids.discard(qid)
                self.let_go.add(qid)
                push(qid)
                busy = self.waiting[key] > 0
                freed += 1
        if not line:
            del self.parked[key]
            return False
        return not busy and freed == most

    def slot(self, key: str, size: int = 0) -> asyncio.Semaphore:
        """The connection slots of ``key``: ``size`` (an upstream's max_connections,
        read when its first delivery starts), else per_destination_concurrency."""
        return self.slots.setdefault(key, asyncio.Semaphore(size or self.per_destination))

    def unreachable(self, key: str, reply: Reply, now: float) -> None:
        """No host of ``key`` could be reached (again): marked dead after DEAD_AFTER."""
        self.failures[key] += 1
        if self.failures[key] >= DEAD_AFTER:
            self.dead[key] = Dead(now + COOL_OFF, reply)

    def reached(self, key: str) -> None:
        self.failures.pop(key, None)
        self.dead.pop(key, None)

    def forget_marks(self) -> None:
        """The operator asks for a real try (a flush): no destination is dead."""
        self.dead.clear()
        self.failures.clear()
