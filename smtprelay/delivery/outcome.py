"""What a delivery attempt produces: per-recipient replies, and errors that carry one.

Every failure is expressed as a :class:`Reply`, so the scheduler decides from the code
alone: 2xx delivered, 4xx try again later, 5xx give up. ``DeliveryError`` is raised for
failures that concern the whole attempt (no host reachable, DNS failure, policy);
it is defined, with the rest of the stage's exception tree, in errors.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtprelay.delivery.errors import DeliveryError
from smtprelay.replies import Reply

__all__ = ["DeliveryError", "Hop", "Parcel", "RecipientOutcome"]


@dataclass(frozen=True, slots=True)
class Hop:
    """One address to connect to; ``name`` is the host name (for TLS and the log)."""

    name: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}[{self.address}]:{self.port}"


@dataclass(frozen=True, slots=True)
class Parcel:
    """What one transaction sends: the envelope part for these recipients and the bytes.

    ``rcpt_params`` (address -> NOTIFY/ORCPT) are passed on when the hop speaks DSN;
    ``qid`` names the message in the log.
    """

    sender: str
    recipients: list[str]
    data: bytes
    mail_params: dict[str, str] = field(default_factory=dict)
    rcpt_params: dict[str, dict[str, str]] = field(default_factory=dict)
    qid: str = "NOQUEUE"


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    address: str
    reply: Reply
    relay: str  # "host[ip]:port", or "none" when no connection was made
    # Seconds spent connecting (greeting, EHLO, TLS, AUTH) and transmitting.
    connect_time: float = 0.0
    transmit_time: float = 0.0
    # The next hop took this recipient's DSN request (it speaks DSN): it reports success.
    dsn_passed: bool = False
