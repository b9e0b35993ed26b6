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
    # What a notice (DSN) generated here is: "failure", "delay", "success", "postmaster".
    notice: str | None = None
    delay_warned: bool = False

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
