"""How one queued message is shown to operators: the item of ``GET /queue`` and of
``smtprelay queue list`` (which reads the spool itself when the daemon is stopped)."""

from __future__ import annotations

from typing import Any

from smtprelay.envelope import Envelope, QueueState, RecipientState


def due_time(envelope: Envelope) -> float:
    """When the message is next attempted: its retry time, but never before its
    ``send_at`` while it has not been attempted (a ``send_at`` in the past: at once)."""
    if envelope.send_at is not None and not envelope.attempts:
        return max(envelope.next_attempt, envelope.send_at)
    return envelope.next_attempt


def is_scheduled(envelope: Envelope, now: float) -> bool:
    """Waiting for its ``send_at``: not attempted yet, not on hold, and the time ahead."""
    return (
        envelope.state is QueueState.ACTIVE
        and not envelope.attempts
        and envelope.send_at is not None
        and envelope.send_at > now
    )


def spool_state(envelope: Envelope, now: float) -> str:
    """The state of a message read from the spool while the daemon is stopped."""
    return "scheduled" if is_scheduled(envelope, now) else envelope.state.value


def queue_item(envelope: Envelope, state: str, now: float) -> dict[str, Any]:
    """``state`` is "active", "deferred", "hold" or "scheduled" (the scheduler knows
    which is true). ``send_at`` is the time a scheduled send was asked for (or null)."""
    pending = [r for r in envelope.recipients if r.state is RecipientState.PENDING]
    return {
        "qid": envelope.qid,
        "state": state,
        "arrival": envelope.arrival,
        "age_s": round(max(0.0, now - envelope.arrival), 3),
        "size": envelope.size,
        "sender": envelope.sender,
        "recipients": [r.address for r in pending],
        "nrcpt": len(envelope.recipients),
        "attempts": envelope.attempts,
        "next_attempt": None if state == "hold" else due_time(envelope),
        "send_at": envelope.send_at,
        "last_error": next((r.last_reply for r in pending if r.last_reply), None),
        "notice": envelope.notice,
    }
