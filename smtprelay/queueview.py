"""How one queued message is shown to operators: the item of ``GET /queue`` and of
``smtprelay queue list`` (which reads the spool itself when the daemon is stopped)."""

from __future__ import annotations

from typing import Any

from smtprelay.envelope import Envelope, RecipientState


def queue_item(envelope: Envelope, state: str, now: float) -> dict[str, Any]:
    """``state`` is "active", "deferred" or "hold" (the scheduler knows which is true)."""
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
        "next_attempt": None if state == "hold" else envelope.next_attempt,
        "last_error": next((r.last_reply for r in pending if r.last_reply), None),
        "notice": envelope.notice,
    }
