"""One message's status in the shape of ``GET /v1/messages/{id}``, the same for SMTP
and HTTP submissions.

While a message is queued its envelope (from the spool, through
:class:`~smtprelay.queueops.QueueOperations`) is the truth; once it left the queue the
history :mod:`smtprelay.stats` keeps for ``[http] history_retention`` is: the envelope
as accepted, and the delivery events the mail log had for it.

Message statuses: ``scheduled`` (waits for ``send_at``), ``queued`` (waits for its
first attempt, or is held), ``sending`` (an attempt is under way), ``deferred`` (an
attempt left a recipient pending), then one of ``delivered``, ``partially_delivered``
(some delivered, others not), ``bounced``, ``canceled`` (by the API, or deleted by the
operator) or ``expired`` (the queue lifetime ended). A recipient's status is one of
the same words but ``partially_delivered``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from smtprelay.envelope import Envelope, QueueState, RecipientState
from smtprelay.history import Final, History
from smtprelay.maillog import Event

MESSAGE_STATUSES = (
    "scheduled",
    "queued",
    "sending",
    "deferred",
    "delivered",
    "partially_delivered",
    "bounced",
    "canceled",
    "expired",
)
FINAL_STATUSES = frozenset({"delivered", "bounced", "canceled", "expired"})
# "554 5.4.7 Delivery time expired; ..." as the scheduler writes an expiry.
_EXPIRED_PREFIX = "554 5.4.7 "
_REPLY = re.compile(r"(\d{3})(?: (\d\.\d{1,3}\.\d{1,3}))? ?(.*)", re.DOTALL)
# The log's delivery status -> the API's word for a finished recipient.
_LOGGED = {"sent": "delivered", "bounced": "bounced", "expired": "expired"}


def rfc3339(ts: float) -> str:
    """``2026-12-04T18:56:06.123Z``."""
    stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _host(relay: str | None) -> str | None:
    """``mx1.example.com`` of ``mx1.example.com[192.0.2.1]:25``."""
    if not relay:
        return None
    return relay.partition("[")[0] or relay


def _reply(code: int | None, enhanced: str | None, text: str, relay: str | None) -> dict[str, Any]:
    return {"code": code, "enhanced": enhanced, "text": text, "host": _host(relay)}


def _parsed_reply(line: str, relay: str | None) -> dict[str, Any]:
    match = _REPLY.fullmatch(line)
    if match is None:
        return _reply(None, None, line, relay)
    return _reply(int(match.group(1)), match.group(2), match.group(3), relay)


def summary(statuses: list[str]) -> str:
    """The message's status from its recipients' when every one is final."""
    final = set(statuses)
    if final == {"delivered"}:
        return "delivered"
    if "delivered" in final:
        return "partially_delivered"
    for word in ("canceled", "expired"):
        if final == {word}:
            return word
    if "canceled" in final:
        return "canceled"
    return "bounced"


def from_queue(
    envelope: Envelope, attempting: bool, history: History | None, now: float
) -> dict[str, Any]:
    """The status of a queued message (``history``: for delivered_at)."""
    finals = history.finals() if history else {}
    scheduled = envelope.send_at is not None and envelope.send_at > now and not attempting
    waiting = "scheduled" if scheduled else "sending" if attempting else None
    recipients = []
    for r in envelope.recipients:
        shown: dict[str, Any] = {"email": r.address}
        if r.state is RecipientState.DELIVERED:
            shown["status"] = "delivered"
        elif r.state is RecipientState.FAILED:
            expired = (r.last_reply or "").startswith(_EXPIRED_PREFIX)
            shown["status"] = "expired" if expired else "bounced"
        elif r.state is RecipientState.CANCELED:
            shown["status"] = "canceled"
        else:
            shown["status"] = waiting or ("deferred" if r.attempts else "queued")
        shown["attempts"] = r.attempts
        if r.last_reply:
            shown["last_reply"] = _parsed_reply(r.last_reply, r.last_relay)
        if r.state is RecipientState.PENDING and not attempting:
            due = envelope.next_attempt
            if envelope.send_at is not None:
                due = max(due, envelope.send_at)
            shown["next_attempt_at"] = rfc3339(max(due, envelope.arrival))
        final = finals.get(r.address)
        if r.state is RecipientState.DELIVERED and final is not None:
            shown["delivered_at"] = rfc3339(final.time)
        recipients.append(shown)
    if waiting:
        status = waiting
    elif envelope.state is QueueState.DEFERRED or any(r.attempts for r in envelope.recipients):
        status = "deferred"
    else:
        status = "queued"  # new, or held by the operator
    return _shape_envelope(envelope.qid, status, envelope, envelope.send_at, recipients)


def from_history(history: History, attempting: bool, now: float) -> dict[str, Any]:
    """The status of a message from its history alone: one that left the queue, or a
    queued one in a listing (which reads no envelopes)."""
    accepted: Envelope | None = None
    if history.envelope is not None:
        try:
            accepted = Envelope.from_json(history.envelope)
        except ValueError:
            accepted = None
    finals = history.finals()
    addresses = [r.address for r in accepted.recipients] if accepted else list(finals)
    gone = history.removed_at is not None
    # Left pending when the message was removed: canceled (or deleted by the operator).
    leftover = "canceled" if gone else None
    if not gone and accepted is not None and accepted.send_at and history.send_at:
        accepted.send_at = history.send_at  # moved by PATCH since
    scheduled = (
        not gone and not attempting and history.send_at is not None and history.send_at > now
    )
    recipients = []
    for address in addresses:
        final = finals.get(address)
        status = _recipient(final, leftover, attempting, scheduled)
        shown: dict[str, Any] = {
            "email": address,
            "status": status,
            "attempts": final.attempts if final else 0,
        }
        if final is not None and (final.code is not None or final.text):
            shown["last_reply"] = _reply(final.code, final.enhanced, final.text, final.relay)
        if final is not None and status == "delivered":
            shown["delivered_at"] = rfc3339(final.time)
        recipients.append(shown)
    statuses = [r["status"] for r in recipients]
    if gone:
        status = summary(statuses) if statuses else "canceled"
    elif attempting:
        status = "sending"
    elif scheduled:
        status = "scheduled"
    else:
        status = "deferred" if history.deferred else "queued"
    if accepted is None:
        return _shape(
            history.qid,
            status,
            history.via,
            history.first,
            history.send_at,
            list(history.tags),
            {},
            _size(history),
            recipients,
        )
    return _shape_envelope(history.qid, status, accepted, history.send_at, recipients)


def quick_status(history: History, attempting: bool, now: float) -> str:
    """The message status of :func:`from_history` without parsing the envelope (a
    listing filters thousands of histories by it)."""
    if history.removed_at is None:
        if attempting:
            return "sending"
        if history.send_at is not None and history.send_at > now:
            return "scheduled"
        return "deferred" if history.deferred else "queued"
    finals = history.finals()
    statuses = [_recipient(f, "canceled", False, False) for f in finals.values()]
    if len(finals) < _recipient_count(history):
        statuses.append("canceled")
    return summary(statuses) if statuses else "canceled"


def _recipient_count(history: History) -> int:
    for event in history.events:
        if event.get("event") == Event.QUEUED and isinstance(event.get("nrcpt"), int):
            return int(event["nrcpt"])
    return 0


def _recipient(final: Final | None, leftover: str | None, attempting: bool, scheduled: bool) -> str:
    if final is not None and final.status in _LOGGED:
        return _LOGGED[final.status]
    if leftover:
        return leftover
    if attempting:
        return "sending"
    if final is not None:
        return "deferred"
    return "scheduled" if scheduled else "queued"


def _size(history: History) -> int:
    for event in history.events:
        size = event.get("size")
        if isinstance(size, int):
            return size
    return 0


def _shape_envelope(
    qid: str,
    status: str,
    envelope: Envelope,
    send_at: float | None,
    recipients: list[dict[str, Any]],
) -> dict[str, Any]:
    """The resource from an envelope (queued now, or as accepted): how it was submitted,
    its tags, metadata and size."""
    submission = envelope.submission
    return _shape(
        qid,
        status,
        str(submission.via),
        envelope.arrival,
        send_at,
        list(submission.tags),
        dict(submission.metadata),
        envelope.size,
        recipients,
    )


def _shape(
    qid: str,
    status: str,
    via: str,
    created: float,
    send_at: float | None,
    tags: list[str],
    metadata: dict[str, str],
    size: int,
    recipients: list[dict[str, Any]],
) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": qid,
        "status": status,
        "submitted_via": via,
        "created_at": rfc3339(created),
    }
    if send_at is not None:
        shown["send_at"] = rfc3339(send_at)
    shown.update(tags=tags, metadata=metadata, size=size, recipients=recipients)
    return shown


def encode_cursor(qid: str) -> str:
    """An opaque cursor: clients pass it back, never build it."""
    raw = json.dumps({"before": qid}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> str | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        return None
    before = value.get("before") if isinstance(value, dict) else None
    return before if isinstance(before, str) else None
