"""What a delivery attempt produces: per-recipient replies, and errors that carry one.

Every failure is expressed as a :class:`Reply`, so the scheduler decides from the code
alone: 2xx delivered, 4xx try again later, 5xx give up. ``DeliveryError`` is raised for
failures that concern the whole attempt (no host reachable, DNS failure, policy).
"""

from __future__ import annotations

from dataclasses import dataclass

from smtprelay.replies import Reply


class DeliveryError(Exception):
    """``unreachable``: no connection could be made at all (refused, timed out, no route),
    the only failure that counts towards marking a destination dead."""

    def __init__(self, reply: Reply, relay: str = "none", *, unreachable: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.relay = relay
        self.unreachable = unreachable

    @property
    def permanent(self) -> bool:
        return self.reply.code >= 500


@dataclass(frozen=True, slots=True)
class Hop:
    """One address to connect to; ``name`` is the host name (for TLS and the log)."""

    name: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}[{self.address}]:{self.port}"


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
