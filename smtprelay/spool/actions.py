"""The operator's actions on one queued message, as changes to its spool file.

hold, release and delete, written once for both callers: the scheduler (through its
executor, after taking the message out of its schedule, and only when no attempt is
under way) and ``smtprelay queue`` when the daemon is stopped (nothing else touches the
spool then). Each function blocks on the disk, changes only the file, and says what it
found and did in a :class:`Change`; what follows in memory (the ledger, the schedule, the
mail log) stays with the caller, since only the scheduler has any of it.

Bounce is not here: it fails the pending recipients and spools a failure notice (the
delivery stage's ``Notices`` and DSN builder), so it needs the delivery stage.

Errors reading or writing the file (``OSError``, ``ValueError`` for an unreadable
envelope) are raised to the caller, which reports them for this QID and goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from smtprelay.envelope import Envelope, QueueState
from smtprelay.queueops import Outcome
from smtprelay.spool.store import Spool


@dataclass(frozen=True, slots=True)
class Change:
    """What an action found and did to one message's spool file."""

    outcome: Outcome
    # The envelope as the spool holds it now; None when the message is not (or no
    # longer) queued: NOT_FOUND, or DELETED.
    envelope: Envelope | None
    # The file was rewritten or removed: something to log.
    changed: bool


NOT_FOUND = Change(Outcome.NOT_FOUND, None, False)


def hold(spool: Spool, qid: str) -> Change:
    """Put on hold (state ``hold``, durably). A message held already is left as it is
    (outcome HELD, ``changed`` False)."""
    try:
        envelope = spool.load(qid)
    except FileNotFoundError:
        return NOT_FOUND
    if envelope.state is QueueState.HOLD:
        return Change(Outcome.HELD, envelope, False)
    envelope.state = QueueState.HOLD
    spool.update(envelope)
    return Change(Outcome.HELD, envelope, True)


def release(spool: Spool, qid: str, now: float) -> Change:
    """Take off hold (state ``active``, next attempt ``now``, durably). A message not on
    hold is left as it is: NOT_HELD, with its envelope (the scheduler counts it)."""
    try:
        envelope = spool.load(qid)
    except FileNotFoundError:
        return NOT_FOUND
    if envelope.state is not QueueState.HOLD:
        return Change(Outcome.NOT_HELD, envelope, False)
    envelope.state = QueueState.ACTIVE
    envelope.next_attempt = now
    spool.update(envelope)
    return Change(Outcome.RELEASED, envelope, True)


def delete(spool: Spool, qid: str) -> Change:
    """Remove the message durably, without a notice to anyone."""
    if not os.path.exists(spool.path(qid)):
        return NOT_FOUND
    spool.remove(qid)
    return Change(Outcome.DELETED, None, True)
