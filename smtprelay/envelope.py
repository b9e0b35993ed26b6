"""The message model: what the spool stores beside the raw bytes of a message.

An :class:`Envelope` is the JSON record of one queued message. It carries everything a
later stage needs without re-reading the session: the SMTP envelope (sender, recipients,
ESMTP parameters), who submitted it and how, and the per-recipient delivery state that
the delivery stage rewrites after every attempt.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1


class RecipientState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class QueueState(enum.StrEnum):
    ACTIVE = "active"
    DEFERRED = "deferred"
    HOLD = "hold"


@dataclass(slots=True)
class Recipient:
    address: str
    state: RecipientState = RecipientState.PENDING
    # RCPT parameters as given (e.g. NOTIFY, ORCPT), keys upper-case.
    params: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    last_reply: str | None = None


@dataclass(slots=True)
class Client:
    ip: str
    port: int
    helo: str
    auth_user: str | None = None
    auth_method: str | None = None
    tls: str | None = None  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384", None when plaintext
    protocol: str = "ESMTP"  # the RFC 3848 "with" keyword


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

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.mail_params

    def to_json(self) -> bytes:
        record = dataclasses.asdict(self)
        record["version"] = FORMAT_VERSION
        return json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        """Parse a spool record; raises ValueError on anything malformed."""
        try:
            record: dict[str, Any] = json.loads(raw)
            if record.pop("version") != FORMAT_VERSION:
                raise ValueError("unsupported spool record version")
            recipients = [
                Recipient(**{**r, "state": RecipientState(r["state"])})
                for r in record.pop("recipients")
            ]
            client = Client(**record.pop("client"))
            state = QueueState(record.pop("state"))
            envelope = cls(recipients=recipients, client=client, state=state, **record)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed spool record: {e}") from e
        if not envelope.recipients:
            raise ValueError("malformed spool record: no recipients")
        return envelope
