"""Cancel and reschedule (the HTTP message API), on the :class:`Operator`'s lock.

A cancel turns every pending recipient into CANCELED (never attempted again, no notice,
logged ``QID: canceled by BY``) and removes the message durably. A message under
attempt is marked durably (``cancel_requested_by``, written under the attempt's write
lock) and the attempt concludes the cancel (``delivery/attempt.py``). A reschedule moves
only a message that has not been attempted yet and is not on hold.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from smtprelay import ids, maillog
from smtprelay.delivery.attempt import InFlight
from smtprelay.delivery.recording import cancel_pending
from smtprelay.envelope import Envelope, QueueState, RecipientState
from smtprelay.queueops import CancelResult, Outcome, RecipientCancel
from smtprelay.queueview import due_time

if TYPE_CHECKING:
    from smtprelay.delivery.operator import Operator

log = logging.getLogger("smtprelay.delivery")


async def cancel(op: Operator, qid: str, by: str) -> list[RecipientCancel] | None:
    """Cancel every pending recipient: CANCELED, never attempted again, no notice;
    logged ``QID: canceled by BY``. A message under attempt is marked durably
    (``cancel_requested_by``) and its pending recipients answer ``pending``: what
    that attempt leaves pending is canceled when it ends. None: not queued. A
    spool that cannot be read or written raises (OSError, SpoolError)."""
    if not ids.is_valid(qid):
        return None
    async with op.lock:
        flight = op.s.in_flight.get(qid)
        if flight is not None:
            return await _cancel_in_flight(op, qid, flight, by)
        with op.out_of_schedule(qid):
            try:
                envelope = await op.s.io(op.s.spool.load, qid)
            except FileNotFoundError:
                op.s.ledger.remove(qid)
                return None
            answer = cancel_answer(envelope, CancelResult.CANCELED)
            if cancel_pending(envelope, by):
                # A durable removal (not a discard): after a power loss a canceled
                # message must not come back and go out.
                await op.s.io(op.s.spool.remove, qid)
                op.s.ledger.remove(qid)
                maillog.removed(qid)
            elif envelope.state is not QueueState.HOLD:
                op.s.enqueue(qid, due_time(envelope))  # nothing to cancel: as it was
        return answer


async def _cancel_in_flight(
    op: Operator, qid: str, flight: InFlight, by: str
) -> list[RecipientCancel] | None:
    async with flight.writing:
        envelope = flight.envelope
        try:
            if envelope is None:  # the attempt is still reading it
                flight.cancel_by = by
                envelope = await op.s.io(op.s.spool.load, qid)
            envelope.cancel_requested_by = by
            answer = cancel_answer(envelope, CancelResult.PENDING)
            # Durable now: an attempt cut short by a crash ends in the cancel on
            # restart. A copy: the attempt goes on changing its envelope meanwhile.
            copy = Envelope.from_json(envelope.to_json())
            await op.s.io(op.s.spool.update, copy)
        except FileNotFoundError:  # the attempt ended and removed it meanwhile
            if envelope is None:
                return None
            return cancel_answer(envelope, CancelResult.PENDING)  # final states now
    log.info("%s: cancel requested by %s during an attempt", qid, by)
    return answer


async def reschedule(op: Operator, qid: str, send_at: float) -> str:
    """Move a message not attempted yet (and not on hold) to ``send_at``, durably;
    a time in the past: at once."""
    if not ids.is_valid(qid):
        return Outcome.NOT_FOUND.value
    async with op.lock:
        if qid in op.s.active:
            return Outcome.ATTEMPTING.value
        try:
            envelope = await op.s.io(op.s.spool.load, qid)
        except FileNotFoundError:
            op.s.ledger.remove(qid)
            return Outcome.NOT_FOUND.value
        if envelope.state is QueueState.HOLD:
            return Outcome.ON_HOLD.value
        if envelope.attempts:
            return Outcome.ATTEMPTED.value
        with op.out_of_schedule(qid):
            envelope.send_at = send_at
            await op.s.io(op.s.spool.update, envelope)
        op.s.ledger.note(envelope)
        op.s.enqueue(qid, due_time(envelope))
    return Outcome.RESCHEDULED.value


def cancel_answer(envelope: Envelope, pending: CancelResult) -> list[RecipientCancel]:
    """Each recipient's answer before the cancel is applied: ``pending`` for those still
    pending (CANCELED, or PENDING while an attempt is in flight)."""
    answer = []
    for r in envelope.recipients:
        if r.state is RecipientState.PENDING:
            answer.append(RecipientCancel(r.address, pending))
        elif r.state is RecipientState.CANCELED:
            answer.append(RecipientCancel(r.address, CancelResult.CANCELED))
        else:
            final = "delivered" if r.state is RecipientState.DELIVERED else "bounced"
            answer.append(RecipientCancel(r.address, CancelResult.TOO_LATE, final))
    return answer
