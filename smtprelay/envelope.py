"""The message model: what the spool stores beside the raw bytes of a message.

An :class:`Envelope` is the JSON record of one queued message. It carries everything a
later stage needs without re-reading the session: the SMTP envelope (sender, recipients,
ESMTP parameters), who submitted it and how, and the per-recipient delivery state that
the delivery stage rewrites after every attempt.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

FORMAT_VERSION = 1
_STRICT = ConfigDict(strict=True)


class RecipientState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    # Withdrawn by the submitter before delivery (POST /v1/messages/{id}/cancel): never
    # attempted again, and no notice is sent for it.
    CANCELED = "canceled"


class QueueState(enum.StrEnum):
    ACTIVE = "active"
    DEFERRED = "deferred"
    HOLD = "hold"


@with_config(_STRICT)
@dataclass(slots=True)
class Recipient:
    address: str
    state: RecipientState = RecipientState.PENDING
    # RCPT parameters as given (e.g. NOTIFY, ORCPT), keys upper-case.
    params: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    last_reply: str | None = None
    last_relay: str | None = None  # "host[ip]:port" that gave last_reply


@with_config(_STRICT)
@dataclass(slots=True)
class Client:
    ip: str
    port: int
    helo: str
    auth_user: str | None = None
    auth_method: str | None = None
    tls: str | None = None  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384", None when plaintext
    protocol: str = "ESMTP"  # the RFC 3848 "with" keyword


class NoticeKind(enum.StrEnum):
    """What a notice (DSN) generated here reports."""

    FAILURE = "failure"
    DELAY = "delay"
    SUCCESS = "success"
    POSTMASTER = "postmaster"  # a failed message from <> (often a notice), to [bounce] postmaster


class SubmittedVia(enum.StrEnum):
    SMTP = "smtp"  # a listener, or the local socket
    HTTP = "http"  # POST /v1/messages


@with_config(_STRICT)
@dataclass(slots=True)
class Submission:
    """How the message came in, beyond the SMTP client: what the HTTP API returns in a
    message's status and what events carry."""

    via: SubmittedVia = SubmittedVia.SMTP
    token: str | None = None  # the name of the HTTP API token that submitted it
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # The Idempotency-Key of the request that created it, as "TOKEN-NAME:KEY", kept with
    # the message so that a crash between the fsync and the reply still replays.
    idempotency_key: str | None = None


@with_config(_STRICT)
@dataclass(slots=True)
class Envelope:
    qid: str
    sender: str
    recipients: list[Recipient]
    client: Client
    arrival: float
    size: int
    # MAIL parameters as given (BODY, SMTPUTF8, SIZE, RET, ENVID ...), keys upper-case.
    mail_params: dict[str, str] = field(default_factory=dict)
    state: QueueState = QueueState.ACTIVE
    next_attempt: float = 0.0
    attempts: int = 0
    message_id: str | None = None
    # What a notice (DSN) generated here is (None: not a notice).
    notice: NoticeKind | None = None
    delay_warned: bool = False
    # Not attempted before this time (a scheduled send; epoch seconds), None: at once.
    send_at: float | None = None
    submission: Submission = field(default_factory=Submission)
    # Who asked to cancel it while an attempt was in flight ("api token NAME"): the
    # recipients that attempt leaves pending are canceled instead of deferred.
    cancel_requested_by: str | None = None

    version: int = FORMAT_VERSION

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.mail_params

    def to_json(self) -> bytes:
        """One line of JSON (the spool keeps it as the first line of a message file)."""
        return _ADAPTER.dump_json(self)

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        """Parse a spool record; raises ValueError on anything malformed."""
        try:
            envelope = _ADAPTER.validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"malformed spool record: {where}: {first['msg']}") from None
        if envelope.version != FORMAT_VERSION:
            raise ValueError(f"unsupported spool record version {envelope.version}")
        if not envelope.recipients:
            raise ValueError("malformed spool record: no recipients")
        return envelope


# pydantic-core reads and writes the spool format strictly (no "42" for 42, no 1 for
# true) and several times faster than json + dataclasses.asdict.
_ADAPTER = TypeAdapter(Envelope)
