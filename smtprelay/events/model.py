"""Mail-log records -> the delivery events of issue 13 (pure functions, no I/O).

The mail log is the one source of truth: :mod:`smtprelay.events.recorder` takes the
same records that the log lines, ``/metrics`` and the message histories
(:mod:`smtprelay.stats`) are made from, and this module says which event each one is.
What a record does not carry (how the message came in, its tags and metadata) comes
from the message's :class:`MessageInfo`, noted when it was queued.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from smtprelay.envelope import Envelope
from smtprelay.events.types import EventType
from smtprelay.maillog import Event

# The mail-log events that become delivery events. "canceled" is the scheduler's
# (POST /v1/messages/{id}/cancel); it is matched by name so this works before and after
# that event joins maillog.Event.
CANCELED = "canceled"
WATCHED = frozenset({Event.QUEUED, Event.REJECT, Event.DELIVERY, Event.NOTICE, CANCELED})
# The relay's own verdict at the end of a message's lifetime (delivery.scheduler.EXPIRED).
EXPIRED_DSN = "5.4.7"


@dataclass(frozen=True, slots=True)
class Fact:
    """One mail-log record that matters here, as the handler captured it."""

    time: float
    event: str
    qid: str | None
    fields: dict[str, Any]


@dataclass(slots=True)
class MessageInfo:
    """What every event of a message repeats: how it came in, tags, metadata."""

    route: str = "smtp"
    smtp_user: str | None = None
    token: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    size: int | None = None
    message_id: str | None = None
    send_at: float | None = None
    notice: bool = False  # a DSN the relay made: its own deliveries are not events

    @classmethod
    def of(cls, envelope: Envelope) -> MessageInfo:
        sub = envelope.submission
        return cls(
            route=str(sub.via),
            smtp_user=envelope.client.auth_user,
            token=sub.token,
            tags=list(sub.tags),
            metadata=dict(sub.metadata),
            sender=envelope.sender,
            recipients=[r.address for r in envelope.recipients],
            size=envelope.size,
            message_id=envelope.message_id,
            send_at=envelope.send_at,
            notice=envelope.notice is not None,
        )

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive deep copy was a fifth of the event
        # store's CPU per message; the store serialises the dict at once.
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MessageInfo:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event before the store gives it its place (``seq``) in the log."""

    id: str
    type: str
    timestamp: float
    qid: str | None
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": rfc3339(self.timestamp),
            "data": self.data,
        }


def new_id() -> str:
    # Made once, stored with the event, sent as webhook-id on every retry.
    return "evt_" + uuid.uuid4().hex


def rfc3339(ts: float) -> str:
    millis = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{millis:03d}Z"


def _reply(fields: dict[str, Any]) -> dict[str, Any]:
    return {"code": fields.get("code"), "enhanced": fields.get("dsn"), "text": fields.get("reason")}


def _remote_mta(relay: object) -> str | None:
    # "mx1.example.net[192.0.2.7]:25" -> "mx1.example.net"; "none": nothing was reached.
    if not isinstance(relay, str) or relay in ("", "none"):
        return None
    return relay.split("[", 1)[0] or None


def _common(qid: str | None, info: MessageInfo | None) -> dict[str, Any]:
    data: dict[str, Any] = {"qid": qid}
    if info is None:
        return data
    data["route"] = info.route
    if info.token is not None:
        data["token"] = info.token
    if info.smtp_user is not None:
        data["smtp_user"] = info.smtp_user
    if info.tags:
        data["tags"] = list(info.tags)
    if info.metadata:
        data["metadata"] = dict(info.metadata)
    return data


def translate(fact: Fact, info: MessageInfo | None) -> list[tuple[str, dict[str, Any]]]:
    """The events (type, data without ``sequence``) that ``fact`` is; none for most."""
    f = fact.fields
    data = _common(fact.qid, info)
    if fact.event == Event.QUEUED:
        if info is not None and info.notice:
            return []
        kind = EventType.MESSAGE_RECEIVED
        if info is not None and info.send_at is not None and info.send_at > fact.time:
            kind = EventType.MESSAGE_SCHEDULED
            data["send_at"] = rfc3339(info.send_at)
        data.update(sender=f.get("sender"), size=f.get("size"), nrcpt=f.get("nrcpt"))
        if info is not None:
            data["recipients"] = list(info.recipients)
            if info.message_id:
                data["message_id"] = info.message_id
        return [(kind, data)]
    if fact.event == Event.REJECT and f.get("command") == "HTTP":
        # An HTTP submission refused by policy (maillog.http_reject): the answer's status
        # and RFC 9457 problem, and the token as the route.
        data.update(
            route="http",
            token=f.get("api_token"),
            command="HTTP",
            http_status=f.get("code"),
            problem=f.get("problem"),
            client_ip=f.get("client_ip"),
            sender=f.get("sender"),
            recipients=list(f.get("recipients") or ()),
        )
        if f.get("recipient") is not None:
            data["recipient"] = f.get("recipient")
        return [(EventType.MESSAGE_REJECTED, data)]
    if fact.event == Event.REJECT:
        data.setdefault("route", "smtp")
        data.update(
            command=f.get("command"),
            reply=_reply(f),
            client_ip=f.get("client_ip"),
            sender=f.get("sender"),
        )
        if f.get("recipient") is not None:
            data["recipient"] = f.get("recipient")
        return [(EventType.MESSAGE_REJECTED, data)]
    if fact.event == Event.DELIVERY:
        if info is not None and info.notice:
            return []
        status, relay = f.get("status"), f.get("relay")
        data["recipient"] = f.get("recipient")
        data["reply"] = _reply(f)
        data["remote_mta"] = _remote_mta(relay)
        data["relay"] = relay
        data["delay"] = f.get("delay")
        if status == "sent":
            return [(EventType.RECIPIENT_DELIVERED, data)]
        diagnostic = f"smtp; {f.get('code')} {f.get('dsn')} {f.get('reason')}"
        if status == "deferred":
            data.update(action="delayed", status=f.get("dsn"), diagnostic=diagnostic)
            return [(EventType.RECIPIENT_DEFERRED, data)]
        data.update(action="failed", status=f.get("dsn"), diagnostic=diagnostic)
        if f.get("dsn") == EXPIRED_DSN and relay == "none":
            return [(EventType.RECIPIENT_EXPIRED, data)]
        return [(EventType.RECIPIENT_BOUNCED, data)]
    if fact.event == Event.NOTICE:
        data.update(kind=f.get("kind"), notice_qid=f.get("notice_qid"))
        return [(EventType.NOTICE_SENT, data)]
    if fact.event == CANCELED:
        for key in ("by", "recipients", "recipient", "reason"):
            if f.get(key) is not None:
                data[key] = f[key]
        return [(EventType.MESSAGE_CANCELED, data)]
    return []
