"""What is queued, kept in memory: counts by state and destination without a spool scan.

The :class:`Ledger` mirrors the spool: the scheduler tells it about every envelope it
has just written (or read at start-up) and every message it has just removed, so
``/status``, ``/metrics`` and ``GET /queue?limit=`` cost the same with 10 or 1,000,000
messages queued. It is changed only *after* the spool write succeeded: a write that
fails leaves the old file, and the ledger still says what that file says.

Memory per message is a few tens of bytes: one dict entry whose key is the queue ID
the scheduler holds anyway and whose value is a small int (cached by CPython, so no
object of its own): the state bits and the index of the message's *profile* -- its
pending recipients per domain, a tuple shared by every message with the same
destinations (a million messages to a handful of domains share a handful of tuples).
Two lists in QID order and in arrival order (pointers to the same strings, plus an
``array`` of arrival times) answer "oldest first" and "page after QID"; entries of
removed messages are skipped when met and dropped when they outnumber live ones.

While the start-up loader reads the spool (after READY=1, see delivery.loader), the
messages it finds are kept in orders of their own (``found=True``): they come in QID
order, so each is an append, while new mail, already arriving, has larger QIDs --
inserted into one list, every old message found after a new one would move a million
pointers. The two are merged once when the load is done (:meth:`Ledger.loaded`);
until then listings merge them as they go.

A message's *state* is what a full scan shows: ``active`` (new, released, or under
attempt now), ``deferred``, ``hold``, ``scheduled`` (its ``send_at`` was still ahead
when it was noted and it has not been attempted; :meth:`Ledger.due` ends that when the
scheduler takes it up, so the ledger itself never looks at the clock per message) or
``rate-limited`` (parked in a rate limiter's line, delivery/ratelimits.py; told by the
scheduler, ended when its attempt starts).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterator

from smtprelay.addresses import domain_of
from smtprelay.delivery.queueorder import QueueOrder
from smtprelay.envelope import Envelope, QueueState, RecipientState

STATES = ("active", "deferred", "hold", "scheduled", "rate-limited")
_CODE = {QueueState.ACTIVE: 0, QueueState.DEFERRED: 1, QueueState.HOLD: 2}
_SCHEDULED = 3  # a fourth value of the two state bits: waiting for its send_at
_ATTEMPTING = 4  # bit beside the spool state: an attempt is under way (shown as active)
_LIMITED = 8  # bit beside the spool state: waiting in a rate limiter's line (ratelimits.py)
_RATE_LIMITED = 4  # index in STATES of what _LIMITED shows
_SHIFT = 4  # the profile index sits above the state bits

Profile = tuple[tuple[str, int], ...]  # (domain, pending recipients), sorted by domain


class Ledger:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._entries: dict[str, int] = {}
        self._counts = [0] * len(STATES)  # by shown state
        self._profiles: list[Profile | None] = []
        self._profile_ids: dict[Profile, int] = {}
        self._profile_refs: list[int] = []
        self._free_profiles: list[int] = []
        self.recipients: Counter[str] = Counter()  # pending recipients by domain
        self.messages: Counter[str] = Counter()  # messages with any, by domain
        self._order = QueueOrder()
        self._found: QueueOrder | None = None  # messages the start-up loader found, if any

    # --- changes ----------------------------------------------------------------------

    def note(self, envelope: Envelope, *, found: bool = False) -> None:
        """The envelope as it is now in the spool (new, recovered, or just rewritten).
        ``found``: read by the start-up loader, in QID order."""
        qid = envelope.qid
        profile = self._intern(_profile_of(envelope))
        old = self._entries.get(qid)
        attempting = 0  # and the rate-limited bit, both kept
        if old is None:
            if found:
                if self._found is None:
                    self._found = QueueOrder()
                self._found.add(qid, envelope.arrival)
            else:
                self._order.add(qid, envelope.arrival)
        else:
            attempting = old & (_ATTEMPTING | _LIMITED)
            self._forget(old)
        value = (profile << _SHIFT) | attempting | self._code(envelope)
        self._entries[qid] = value
        self._counts[_shown(value)] += 1

    def remove(self, qid: str) -> None:
        """The message is no longer in the spool (delivered, bounced, deleted)."""
        old = self._entries.pop(qid, None)
        if old is None:
            return
        self._forget(old)
        for order in self._orders():
            order.compact(self._entries)

    def loaded(self) -> None:
        """The start-up loader is done: merge what it found into the one order (once,
        linear: both are sorted)."""
        found, self._found = self._found, None
        if found is not None:
            self._order.merge(found)

    def due(self, qid: str) -> None:
        """``qid``'s send time has come (the scheduler took it up): no longer scheduled."""
        old = self._entries.get(qid)
        if old is not None and old & 3 == _SCHEDULED:
            new = old & ~3 | _CODE[QueueState.ACTIVE]
            self._counts[_shown(old)] -= 1
            self._counts[_shown(new)] += 1
            self._entries[qid] = new

    def _code(self, envelope: Envelope) -> int:
        if (
            envelope.state is QueueState.ACTIVE
            and not envelope.attempts
            and envelope.send_at is not None
            and envelope.send_at > self.clock()
        ):
            return _SCHEDULED
        return _CODE[envelope.state]

    def attempting(self, qid: str, under_way: bool) -> None:
        """An attempt of ``qid`` started or ended (shown as active meanwhile)."""
        self._flag(qid, _ATTEMPTING, under_way)

    def rate_limited(self, qid: str, waiting: bool) -> None:
        """``qid`` was parked in a rate limiter's line, or its attempt started."""
        self._flag(qid, _LIMITED, waiting)

    def _flag(self, qid: str, bit: int, on: bool) -> None:
        old = self._entries.get(qid)
        if old is None:
            return
        new = old | bit if on else old & ~bit
        if new != old:
            self._counts[_shown(old)] -= 1
            self._counts[_shown(new)] += 1
            self._entries[qid] = new

    # --- questions ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, qid: object) -> bool:
        return qid in self._entries

    def counts(self) -> dict[str, int]:
        return dict(zip(STATES, self._counts, strict=True))

    def state(self, qid: str) -> str | None:
        value = self._entries.get(qid)
        return None if value is None else STATES[_shown(value)]

    def domains(self, qid: str) -> list[str] | None:
        """The domains of the message's pending recipients (None: not in the ledger)."""
        value = self._entries.get(qid)
        if value is None:
            return None
        return [domain for domain, _ in self._profiles[value >> _SHIFT] or ()]

    def oldest_arrival(self) -> float | None:
        return min(
            (a for o in self._orders() if (a := o.oldest(self._entries)) is not None), default=None
        )

    def destinations(self, top: int) -> list[dict[str, int | str]]:
        """The ``top`` domains with the most pending recipients (cost: the number of
        distinct domains, never the number of messages)."""
        return [
            {"domain": domain, "recipients": count, "messages": self.messages[domain]}
            for domain, count in self.recipients.most_common(top)
        ]

    def page(
        self, after: str | None, limit: int, state: str | None = None, domain: str | None = None
    ) -> list[tuple[str, str]]:
        """Up to ``limit`` (QID, state) in QID order (= arrival order) after ``after``,
        with that state and a pending recipient in that domain, if given."""
        found: list[tuple[str, str]] = []
        if limit <= 0 or (domain is not None and not self.messages[domain]):
            return found
        wanted = None if state is None else STATES.index(state)
        for qid in self._in_qid_order(after):
            value = self._entries[qid]
            if wanted is not None and _shown(value) != wanted:
                continue
            if domain is not None and not any(
                d == domain for d, _ in self._profiles[value >> _SHIFT] or ()
            ):
                continue
            found.append((qid, STATES[_shown(value)]))
            if len(found) >= limit:
                break
        return found

    def matching(self, state: str | None, domain: str | None) -> int:
        """How many queued messages have that state and domain (either may be None);
        with both, counted by a walk of the in-memory entries (no spool reads)."""
        if domain is None:
            return len(self._entries) if state is None else self._counts[STATES.index(state)]
        if state is None:
            return self.messages[domain]
        return sum(1 for _ in self._matches(state, domain))

    def _matches(self, state: str, domain: str) -> Iterator[str]:
        wanted = STATES.index(state)
        for qid, value in self._entries.items():
            if _shown(value) == wanted and any(
                d == domain for d, _ in self._profiles[value >> _SHIFT] or ()
            ):
                yield qid

    # --- inside ---------------------------------------------------------------------------

    def _orders(self) -> list[QueueOrder]:
        return [self._order] if self._found is None else [self._order, self._found]

    def _in_qid_order(self, after: str | None) -> Iterator[str]:
        """Live QIDs after ``after``, each once, in QID order (over both orders while
        the start-up loader runs)."""
        previous = None
        for qid in heapq.merge(*(o.qids_after(after) for o in self._orders())):
            # A QID removed and noted again has two entries, side by side.
            if qid != previous and qid in self._entries:
                yield qid
            previous = qid

    def _forget(self, value: int) -> None:
        """Take one message's ``value`` out of the counts."""
        self._counts[_shown(value)] -= 1
        index = value >> _SHIFT
        profile = self._profiles[index]
        assert profile is not None
        self._count_profile(profile, -1)
        self._profile_refs[index] -= 1
        if not self._profile_refs[index]:
            del self._profile_ids[profile]
            self._profiles[index] = None
            self._free_profiles.append(index)

    def _intern(self, profile: Profile) -> int:
        index = self._profile_ids.get(profile)
        if index is None:
            if self._free_profiles:
                index = self._free_profiles.pop()
                self._profiles[index] = profile
                self._profile_refs[index] = 0
            else:
                index = len(self._profiles)
                self._profiles.append(profile)
                self._profile_refs.append(0)
            self._profile_ids[profile] = index
        self._profile_refs[index] += 1
        self._count_profile(profile, +1)
        return index

    def _count_profile(self, profile: Profile, sign: int) -> None:
        for domain, count in profile:
            self.recipients[domain] += sign * count
            self.messages[domain] += sign
            if not self.messages[domain]:
                del self.messages[domain]
                del self.recipients[domain]


def _shown(value: int) -> int:
    """Index in STATES of what a scan shows: active while an attempt is under way,
    rate-limited while in a limiter's line (unless held)."""
    if value & _ATTEMPTING:
        return 0
    if value & _LIMITED and value & 3 != _CODE[QueueState.HOLD]:
        return _RATE_LIMITED
    return value & 3


def _profile_of(envelope: Envelope) -> Profile:
    per_domain: Counter[str] = Counter(
        domain_of(r.address) for r in envelope.recipients if r.state is RecipientState.PENDING
    )
    return tuple(sorted(per_domain.items()))
