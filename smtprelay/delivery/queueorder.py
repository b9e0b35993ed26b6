"""The two orders of the queue ledger (delivery/queuecounts.py): queue IDs in QID order,
for "page after QID", and in arrival order, for "oldest first". Pointers to the strings
the ledger holds anyway, and an ``array`` of arrival times; entries of removed messages
are skipped when met and dropped when they outnumber the live ones."""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator

# Lists of removed entries are compacted once they exceed twice the live ones plus this.
_SLACK = 1024


class QueueOrder:
    """QIDs in QID order and in arrival order; may hold removed QIDs (skipped when met,
    dropped when they outnumber the live ones)."""

    def __init__(self) -> None:
        self.by_qid: list[str] = []  # sorted
        self.by_arrival: list[str] = []  # sorted by arrivals; from head on
        self.arrivals = array("d")
        self.head = 0

    def add(self, qid: str, arrival: float) -> None:
        if not self.by_qid or qid > self.by_qid[-1]:
            self.by_qid.append(qid)  # new QIDs are time-ordered: nearly always the end
        else:
            bisect.insort(self.by_qid, qid)
        if not self.arrivals or arrival >= self.arrivals[-1]:
            self.by_arrival.append(qid)
            self.arrivals.append(arrival)
        else:  # a little out of order (another worker), or a notice with an old arrival
            at = bisect.bisect_right(self.arrivals, arrival, self.head)
            self.by_arrival.insert(at, qid)
            self.arrivals.insert(at, arrival)

    def qids_after(self, after: str | None) -> Iterator[str]:
        start = 0 if after is None else bisect.bisect_right(self.by_qid, after)
        return (self.by_qid[i] for i in range(start, len(self.by_qid)))

    def oldest(self, live: dict[str, int]) -> float | None:
        while self.head < len(self.by_arrival):
            if self.by_arrival[self.head] in live:
                return self.arrivals[self.head]
            self.head += 1
        return None

    def compact(self, live: dict[str, int]) -> None:
        if len(self.by_qid) > 2 * len(live) + _SLACK:
            self.by_qid = [qid for qid in self.by_qid if qid in live]
        if len(self.by_arrival) - self.head > 2 * len(live) + _SLACK:
            keep = [i for i in range(self.head, len(self.by_arrival)) if self.by_arrival[i] in live]
            self.by_arrival = [self.by_arrival[i] for i in keep]
            self.arrivals = array("d", (self.arrivals[i] for i in keep))
            self.head = 0

    def merge(self, other: QueueOrder) -> None:
        """Take in ``other``'s entries; ``other`` is used up. What the loader found is
        older than what came meanwhile, nearly always: then this order's few entries are
        appended to ``other``'s lists in place (a copy of a million pointers into new
        lists held the event loop and added 40 MB at the end of a load); else a sort of
        the two runs (timsort merges them, in C)."""
        if not self.by_qid or (other.by_qid and other.by_qid[-1] < self.by_qid[0]):
            other.by_qid.extend(self.by_qid)
            self.by_qid = other.by_qid
        else:
            self.by_qid = sorted(self.by_qid + other.by_qid)
        for part in (other, self):  # drop what each has skipped already
            del part.by_arrival[: part.head]
            del part.arrivals[: part.head]
            part.head = 0
        split = len(other.by_arrival)
        qids, arrivals = other.by_arrival, other.arrivals
        qids.extend(self.by_arrival)
        arrivals.extend(self.arrivals)
        if split and split < len(arrivals) and arrivals[split - 1] > arrivals[split]:
            order = sorted(range(len(arrivals)), key=arrivals.__getitem__)
            qids = [qids[i] for i in order]
            arrivals = array("d", (arrivals[i] for i in order))
        self.by_arrival, self.arrivals, self.head = qids, arrivals, 0
