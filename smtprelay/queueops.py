"""What the web API and the CLI need from the queue, as a Protocol.

The delivery stage's scheduler implements it; ``web/`` and the CLI see only this
interface, so the HTTP API can grow (submission, cancel, reschedule) without reaching
into the scheduler's internals. Answers per QID are :class:`Outcome` values (or
``"error: ..."`` when the spool could not be read or written).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from smtprelay.envelope import Envelope, QueueState


class Outcome(enum.StrEnum):
    """The answer of an operator action for one QID."""

    FLUSHED = "flushed"
    HELD = "held"
    RELEASED = "released"
    DELETED = "deleted"
    BOUNCED = "bounced"
    RESCHEDULED = "rescheduled"
    # Applied when the attempt under way ends: a delivery is never torn in half.
    AFTER_ATTEMPT = "after-attempt"
    ATTEMPTING = "attempting"  # flush of a message being tried already
    ON_HOLD = "on-hold"  # flush or reschedule of a held message: release it first
    # Flush of a message waiting for its send_at: it still waits (reschedule it instead).
    SCHEDULED = "scheduled"
    # Reschedule of a message attempted already: it follows its retry schedule.
    ATTEMPTED = "attempted"
    NOT_HELD = "not-held"  # release of a message that is not on hold
    NOT_FOUND = "not-found"


class CancelResult(enum.StrEnum):
    """What a cancel did to one recipient."""

    CANCELED = "canceled"
    # Delivered or failed already: its final state is reported beside it.
    TOO_LATE = "too_late"
    # An attempt is in flight: canceled if that attempt does not deliver it.
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class RecipientCancel:
    email: str
    result: CancelResult
    # For TOO_LATE: "delivered" or "bounced" (RecipientState of the envelope).
    final: str | None = None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One queued message as a queue listing shows it."""

    envelope: Envelope
    attempting: bool  # an attempt is under way right now
    scheduled: bool = False  # waiting for its send_at (never attempted before it)
    rate_limited: bool = False  # waiting in a rate limiter's line (delivery/ratelimits.py)

    @property
    def state(self) -> str:
        """``active`` (new, or being attempted now), ``deferred``, ``hold``,
        ``scheduled`` or ``rate-limited``."""
        if self.attempting:
            return QueueState.ACTIVE.value
        if self.rate_limited and self.envelope.state is not QueueState.HOLD:
            return "rate-limited"
        return "scheduled" if self.scheduled else self.envelope.state.value


class QueueOperations(Protocol):
    def clock(self) -> float:
        """The time the queue works with (epoch seconds)."""
        ...

    def is_attempting(self, qid: str) -> bool: ...

    async def load(self, qid: str) -> Envelope | None:
        """The envelope of a queued message, None when it is not (or no longer) queued."""
        ...

    def enqueue_new(self, envelope: Envelope, data: bytes) -> None:
        """A message just made durable in the spool: schedule it (at ``send_at``)."""
        ...

    async def flush(self, qids: Iterable[str] | None = None) -> dict[str, str]: ...

    async def hold(self, qids: Iterable[str]) -> dict[str, str]: ...

    async def release(self, qids: Iterable[str]) -> dict[str, str]: ...

    async def delete(self, qids: Iterable[str]) -> dict[str, str]: ...

    async def bounce(self, qids: Iterable[str]) -> dict[str, str]: ...

    async def cancel(self, qid: str, by: str) -> list[RecipientCancel] | None:
        """Cancel every recipient not delivered or failed yet; no notice is sent for
        them; logged ``QID: canceled by BY``. None when ``qid`` is not queued."""
        ...

    async def reschedule(self, qid: str, send_at: float) -> str:
        """Move a message that has not been attempted yet to ``send_at`` (durably); an
        :class:`Outcome` (``rescheduled``, ``not-found``, ``attempting``, ...)."""
        ...

    async def listing(
        self, after: str | None, limit: int, state: str | None = None, domain: str | None = None
    ) -> tuple[list[QueueEntry], str | None]: ...
