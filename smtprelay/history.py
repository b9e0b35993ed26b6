"""One queue ID's history as the mail log told it: the events kept (bounded), the
envelope as accepted, and what is read back from them (outcome, each recipient's final
result, the envelope brought up to date). :class:`smtprelay.stats.Stats` keeps these;
the HTTP API's message views read them.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from smtprelay.envelope import RecipientState
from smtprelay.historyblob import seal, unseal
from smtprelay.maillog import Event

# Events kept per message: the first HEAD_EVENTS (arrival) and the most recent others.
MAX_EVENTS = 300
HEAD_EVENTS = 10
# How far back among a history's trailing deferrals a new one looks for the one it
# repeats (one per recipient of the last attempt): a message to more recipients than
# this keeps its deferrals apart, up to MAX_EVENTS.
REPEAT_WINDOW = 32
# The fields of a deferral that make the next one a repeat of it.
_SAME = ("relay", "code", "dsn", "reason")


def _note_flags(history: _Kept, event: dict[str, Any]) -> None:
    """The listing's filter fields an event sets: a deferral, who canceled."""
    kind = event.get("event")
    if kind == Event.DELIVERY and event.get("status") == "deferred":
        history.deferred = True
    elif kind == CANCELED_EVENT:
        by = event.get("by") or str(event.get("text", "")).partition("canceled by ")[2]
        history.canceled_by = str(by) or "api"


def _deferral(event: Mapping[str, Any]) -> bool:
    return event.get("event") == Event.DELIVERY and event.get("status") == "deferred"


def _repeating(records: tuple[bytes, ...], event: dict[str, Any]) -> tuple[int, int, Any] | None:
    """If ``event`` is a deferral that repeats its recipient's last one (among the
    trailing deferrals): that record's place, the attempts it stands for and the time
    of the first of them."""
    if not _deferral(event):
        return None
    stop = max(-1, len(records) - 1 - REPEAT_WINDOW)
    for at in range(len(records) - 1, stop, -1):
        earlier = json.loads(records[at])
        if not _deferral(earlier):
            return None
        if earlier.get("recipient") == event.get("recipient"):
            if any(earlier.get(k) != event.get(k) for k in _SAME):
                return None
            return at, int(earlier.get("repeated", 1)), earlier.get("since", earlier.get("time"))
    return None


def attempts_of(event: Mapping[str, Any]) -> int:
    """The attempts a delivery event stands for (a repeated deferral: several)."""
    if _expiry(event):  # the relay's own verdict, not an attempt
        return 0
    repeated = event.get("repeated", 1)
    return repeated if isinstance(repeated, int) and repeated > 0 else 1


@dataclass(slots=True)
class History:
    """What the log said about one queue ID, oldest first.

    Slotted (no ``__dict__`` per message): a daemon keeps up to ``max_messages`` of
    them. Besides the events and the accepted envelope it keeps the few fields that
    ``GET /v1/messages`` filters on, so a listing never parses envelopes: how it was
    submitted, its tags, its send time, whether an attempt deferred it and who
    canceled it. Per-recipient results (delivered_at, last reply, canceled, expired)
    are read back from the events (:meth:`finals`).
    """

    qid: str
    first: float
    events: list[dict[str, Any]] = field(default_factory=list)
    omitted: int = 0  # events dropped from the middle of a very long history
    queued: bool = False
    removed_at: float | None = None
    envelope: bytes | None = None  # the envelope JSON as accepted, if seen
    via: str = "smtp"  # Submission.via
    tags: tuple[str, ...] = ()
    send_at: float | None = None
    deferred: bool = False  # an attempt left a recipient pending
    canceled_by: str | None = None  # "api token NAME" once a cancel was logged

    def finals(self) -> dict[str, Final]:
        """Each recipient's last logged delivery result, with its attempts: what
        ``GET /v1/messages/{id}`` shows for it (a recipient the log says nothing about
        yet is missing)."""
        found: dict[str, Final] = {}
        for event in self.events:
            if event.get("event") != Event.DELIVERY:
                continue
            address = str(event.get("recipient"))
            before = found.get(address)
            attempts = before.attempts if before else 0
            status = str(event.get("status"))
            if _expiry(event):
                status = "expired"
            attempts += attempts_of(event)
            code = event.get("code")
            relay = event.get("relay")
            found[address] = Final(
                status=status,
                attempts=attempts,
                time=float(event.get("time") or 0.0),
                code=code if isinstance(code, int) else None,
                enhanced=str(event.get("dsn") or "") or None,
                text=str(event.get("reason") or ""),
                relay=str(relay) if relay and relay != "none" else None,
            )
        return found

    @property
    def deleted(self) -> bool:
        return any(e.get("event") == Event.REMOVED and e.get("reason") for e in self.events)

    @property
    def outcome(self) -> str:
        """``queued`` until removed; then ``delivered``, ``bounced``, ``deleted`` or
        ``partly delivered`` (some recipients delivered, others bounced)."""
        if self.removed_at is None:
            return "queued"
        final: dict[str, str] = {}
        for event in self.events:
            if event.get("event") == Event.CANCELED:
                final.update((str(a), "canceled") for a in event.get("recipients", ()))
            if event.get("event") == Event.REMOVED and event.get("reason"):
                return "deleted"
            if event.get("event") == Event.DELIVERY and event.get("status") != "deferred":
                final[str(event.get("recipient"))] = str(event.get("status"))
        statuses = set(final.values())
        if statuses == {"sent"}:
            return "delivered"
        if statuses == {"bounced"}:
            return "bounced"
        if "canceled" in statuses and "sent" not in statuses:
            return "canceled"
        return "partly delivered" if statuses else "removed"

    def recipient_states(self) -> dict[str, str]:
        """The last delivery status logged for each recipient."""
        states: dict[str, str] = {}
        for event in self.events:
            if event.get("event") == Event.DELIVERY:
                states[str(event.get("recipient"))] = str(event.get("status"))
        return states

    def settled(self, envelope: dict[str, Any]) -> dict[str, Any]:
        """``envelope`` (as accepted, in its JSON form) brought up to date from the
        log: each recipient's final state, attempts, last reply and relay; the
        message's state (its outcome), attempts (the most any recipient had) and no
        next attempt. The accepted copy was written before any attempt was made."""
        shown = dict(envelope)
        attempts: Tally[str] = Tally()
        last: dict[str, dict[str, Any]] = {}
        for event in self.events:
            if event.get("event") != Event.DELIVERY:
                continue
            address = str(event.get("recipient"))
            last[address] = event
            attempts[address] += attempts_of(event)
        recipients = []
        for accepted in shown.get("recipients", []):
            recipient = dict(accepted)
            address = recipient.get("address", "")
            final = last.get(address)
            if final is not None:
                recipient["state"] = _RECIPIENT_STATES.get(
                    str(final.get("status")), recipient.get("state")
                )
                recipient["attempts"] = attempts[address]
                recipient["last_reply"] = (
                    f"{final.get('code')} {final.get('dsn')} {final.get('reason')}"
                )
                relay = final.get("relay")
                recipient["last_relay"] = relay if relay and relay != "none" else None
            recipients.append(recipient)
        shown["recipients"] = recipients
        if self.removed_at is not None:
            shown["state"] = self.outcome
            shown["next_attempt"] = None
        shown["attempts"] = max(attempts.values(), default=0)
        return shown


@dataclass(frozen=True, slots=True)
class Final:
    """One recipient's last delivery result as the log gave it."""

    status: str  # "sent", "deferred", "bounced" or "expired" (the lifetime ended)
    attempts: int
    time: float
    code: int | None
    enhanced: str | None
    text: str
    relay: str | None  # "host[ip]:port", None when no server answered


# The event of a cancel through the HTTP API ("QID: canceled by api token NAME"),
# logged by the scheduler; its recipients left pending at removal were canceled.
CANCELED_EVENT = "canceled"

# A recipient's last delivery status -> its state in the envelope (RecipientState).
_RECIPIENT_STATES = {
    "sent": RecipientState.DELIVERED.value,
    "bounced": RecipientState.FAILED.value,
    "deferred": RecipientState.PENDING.value,
}
# The relay's own verdict when a message's lifetime ends (delivery.scheduler.EXPIRED):
# logged like a delivery, but nothing was attempted.
_EXPIRED_DSN = "5.4.7"


def _expiry(event: Mapping[str, Any]) -> bool:
    return event.get("dsn") == _EXPIRED_DSN and event.get("relay") == "none"


@dataclass(slots=True)
class _Kept:
    """One queue ID's history as kept: each event as compact JSON (about a third of the
    memory of the dict; up to MAX_MESSAGES of these are kept, and a large queue being
    deferred fills them all -- 1.2 KB per one-event history as dicts, 0.5 KB so; sealed
    once quiet, see :meth:`packed`).

    Held between events as :meth:`packed` -- an exact tuple of strings, bytes, numbers
    and tuples of those, or once sealed one ``bytes`` -- which CPython's cyclic
    collector does not track (the tuple: once it has seen it): every full
    collection walks every tracked object, and with 1,000,000 queued and the histories
    full of deferrals, 100,000 of these objects and their event lists made each one
    150-178 ms of a stopped event loop (bench/README.md). Unpacked to change or read."""

    qid: str
    first: float
    records: tuple[bytes, ...] = ()
    omitted: int = 0
    queued: bool = False
    removed_at: float | None = None
    envelope: bytes | None = None
    via: str = "smtp"
    tags: tuple[str, ...] = ()
    send_at: float | None = None
    deferred: bool = False
    canceled_by: str | None = None

    @classmethod
    def unpacked(cls, qid: str, packed: Packed) -> _Kept:
        if isinstance(packed, tuple):
            return cls(*packed)
        first, removed_at, queued = _SEALED_HEAD.unpack_from(packed)
        envelope, (fields, *records) = unseal(memoryview(packed)[_SEALED_HEAD.size :])
        omitted, via, tags, send_at, deferred, canceled_by = json.loads(fields)
        return cls(
            qid,
            first,
            tuple(records),
            omitted,
            bool(queued),
            None if math.isnan(removed_at) else removed_at,
            envelope,
            via,
            tuple(tags),
            send_at,
            deferred,
            canceled_by,
        )

    def packed(self) -> Packed:
        """What to keep. A quiet history -- the message removed, deferred or scheduled:
        nothing more is logged about it for a while, or ever -- is sealed: one ``bytes``
        of the fields the owner reads without opening it (``_SEALED_HEAD``), then the
        other fields, the records and the envelope in one compressed blob
        (historyblob.py), 1.7 KB of a plain message's JSON in 0.2-0.3 KB. As a tuple
        of the fields, the blob and a float or two, it took 0.4 KB: 40 MB of the
        100,000 histories kept while a large queue is deferred."""
        if self.removed_at is not None or self.deferred or self.send_at is not None:
            fields = (
                self.omitted,
                self.via,
                self.tags,
                self.send_at,
                self.deferred,
                self.canceled_by,
            )
            removed_at = math.nan if self.removed_at is None else self.removed_at
            head = _SEALED_HEAD.pack(self.first, removed_at, self.queued)
            return head + seal(self.envelope, (_ENCODER.encode(fields).encode(), *self.records))
        return (
            self.qid,
            self.first,
            self.records,
            self.omitted,
            self.queued,
            self.removed_at,
            self.envelope,
            self.via,
            self.tags,
            self.send_at,
            self.deferred,
            self.canceled_by,
        )

    def add(self, event: dict[str, Any]) -> None:
        """Keep ``event``. A deferral that repeats its recipient's last one (same
        relay, code and reply) replaces it, counting the attempts in ``repeated``
        since the first one's time (``since``): an outage of days otherwise grew a
        queued message's history by an event per retry -- 5,000 messages deferred
        100 times held 251 MB of them."""
        records = self.records
        repeat = _repeating(records, event)
        if repeat is not None:
            at, repeated, since = repeat
            event = {**event, "repeated": repeated + 1, "since": since}
            records = records[:at] + records[at + 1 :]
        elif len(records) >= MAX_EVENTS:
            records = records[:HEAD_EVENTS] + records[HEAD_EVENTS + 1 :]
            self.omitted += 1
        self.records = (*records, _ENCODER.encode(event).encode())
        _note_flags(self, event)


# A kept history between events (_Kept.packed): open, a tuple of _Kept's fields; sealed,
# bytes. The fields its owner reads without unpacking it: first, removed_at and queued.
Packed = tuple[Any, ...] | bytes
_FIRST, _QUEUED, _REMOVED_AT = 1, 4, 5  # in the tuple
_SEALED_HEAD = struct.Struct("<dd?")  # first, removed_at (NaN: none), queued


def first_of(packed: Packed) -> float:
    first: float = (
        packed[_FIRST] if isinstance(packed, tuple) else _SEALED_HEAD.unpack_from(packed)[0]
    )
    return first


def removed_at_of(packed: Packed) -> float | None:
    if isinstance(packed, tuple):
        return cast(float | None, packed[_REMOVED_AT])
    removed_at: float = _SEALED_HEAD.unpack_from(packed)[1]
    return None if math.isnan(removed_at) else removed_at


def queued_of(packed: Packed) -> bool:
    return bool(packed[_QUEUED] if isinstance(packed, tuple) else packed[_SEALED_HEAD.size - 1])


def readable(qid: str, packed: Packed) -> History:
    """The readable copy of a kept history (events decoded), for the caller to use
    without the lock. History's fields are _Kept's, in the same order."""
    kept = _Kept.unpacked(qid, packed)
    return History(
        kept.qid,
        kept.first,
        [json.loads(r) for r in kept.records],
        kept.omitted,
        kept.queued,
        kept.removed_at,
        kept.envelope,
        kept.via,
        kept.tags,
        kept.send_at,
        kept.deferred,
        kept.canceled_by,
    )


# Compact, and never failing on a value JSON has no type for (shown as its str()).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
