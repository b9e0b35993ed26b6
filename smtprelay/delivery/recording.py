"""What one attempt's outcomes do to a message's recipients: each reply applied to its
recipient (delivered, failed, still pending) and logged as Postfix's delivery line;
recipients that expire or are canceled. Returns the final outcomes, for the notices
(delivery/notices.py); the attempt (delivery/attempt.py) saves and schedules."""

from __future__ import annotations

from smtprelay import maillog
from smtprelay.delivery.notices import Result
from smtprelay.delivery.outcome import RecipientOutcome
from smtprelay.delivery.ratelimits import NOT_SENT
from smtprelay.delivery.slowdown import slow_down
from smtprelay.envelope import Envelope, Recipient, RecipientState
from smtprelay.queueview import due_time
from smtprelay.replies import Reply

EXPIRED = Reply(554, "5.4.7", "Delivery time expired")
# In the DSN an expiry is reported as the temporary condition it was (RFC 3463 X.4.7).
EXPIRED_STATUS = "4.4.7"


def record(
    envelope: Envelope,
    result: tuple[list[RecipientOutcome], float],
    activated: float,
    shaped: dict[str, bool],
    now: float,
) -> list[Result]:
    """Apply and log one destination's outcomes; the final ones, for notices.
    Recipients held back by a rate limit or a "slow down" reply are added to
    ``shaped``: not an attempt of theirs (a reply is logged and kept, though)."""
    outcomes, started = result
    by_address = {r.address: r for r in envelope.recipients}
    final: list[Result] = []
    for outcome in outcomes:
        recipient = by_address[outcome.address]
        reply = outcome.reply
        if reply == NOT_SENT:
            shaped.setdefault(outcome.address, False)
            continue
        # Only a server's reply: one the relay composed (an OAuth2 token it could not
        # get, relay=none) is about the relay, not the upstream's pace.
        slowed = outcome.relay != "none" and slow_down(reply) is not None
        if slowed:
            shaped[outcome.address] = True
        else:
            recipient.attempts += 1
        recipient.last_reply = str(reply)
        recipient.last_relay = outcome.relay if outcome.relay != "none" else None
        if slowed:
            status = "deferred"  # a quota's 5xx too: the upstream waits, not the message
        elif reply.code < 400:
            recipient.state, status = RecipientState.DELIVERED, "sent"
            final.append(
                Result(
                    recipient,
                    "relayed",
                    reply.enhanced,
                    str(reply),
                    outcome.relay,
                    outcome.dsn_passed,
                )
            )
        elif reply.code >= 500:
            recipient.state, status = RecipientState.FAILED, "bounced"
            final.append(Result(recipient, "failed", reply.enhanced, str(reply), outcome.relay))
        else:
            status = "deferred"
        delays = (
            max(0.0, activated - due_time(envelope)),  # arrival, for a first attempt
            max(0.0, started - activated),
            outcome.connect_time,
            outcome.transmit_time,
        )
        maillog.delivery(
            envelope.qid,
            outcome.address,
            outcome.relay,
            now - envelope.arrival,
            delays,
            reply,
            status,
        )
    return final


def expire(envelope: Envelope, pending: list[Recipient], now: float) -> list[Result]:
    """The queue lifetime is over: every pending recipient fails with the last error it
    met (logged as bounced, with no relay); their results, for the failure notice."""
    results: list[Result] = []
    for recipient in pending:
        last = recipient.last_reply
        reply = EXPIRED.with_text(f"{EXPIRED.text}; last error: {last or 'none'}")
        recipient.state = RecipientState.FAILED
        recipient.last_reply = str(reply)
        results.append(
            Result(recipient, "failed", EXPIRED_STATUS, last, recipient.last_relay or "none")
        )
        maillog.bounced_unsent(envelope.qid, recipient.address, now - envelope.arrival, reply)
    return results


def cancel_pending(envelope: Envelope, by: str) -> list[str]:
    """Every pending recipient becomes CANCELED (logged once); their addresses."""
    canceled = [r for r in envelope.recipients if r.state is RecipientState.PENDING]
    for recipient in canceled:
        recipient.state = RecipientState.CANCELED
    if canceled:
        envelope.cancel_requested_by = by
        maillog.canceled(envelope.qid, by, [r.address for r in canceled])
    return [r.address for r in canceled]
