"""The delivery stage's exception tree, and the one place library errors map into it.

aiosmtplib, ssl, the operating system and dnspython each raise their own exceptions;
the context managers here (like httpx's ``map_httpcore_exceptions``) turn them into
the relay's, so the rest of ``delivery/`` catches only what is listed below:
``lookup_errors`` (DNS, used by resolver.py), ``connect_errors`` (TCP connect),
``session_errors``/``starttls_errors``/``auth_errors`` (session.py) and
``link_errors`` (a conversation that breaks during a transaction, transaction.py).

The tree::

    DeliveryError          the whole attempt failed; carries the Reply recorded for
                           every recipient of the attempt, and the relay it came from.
                           Its code decides: 4xx transient (deferred, tried again after
                           the back-off), 5xx permanent (bounced, a failure notice).
                           ``unreachable`` (no TCP connection at all) is the only
                           failure that counts towards marking a destination dead.
                           Raised by the resolver and router (DNS) and by
                           ``Transport.deliver`` (no hop would talk).
    HopSignal              control flow inside one ``Transport.deliver``; never leaves it
      TLSHandshakeFailed   STARTTLS failed or was refused: opportunistic TLS retries in
                           plaintext, any other policy becomes DeliveryError TLS_FAILED
      StaleConnection      a reused connection had been closed by the server: the same
                           hop gets one fresh connection
      TryNextHop           the hop failed before a transaction started (lost at MAIL,
                           MAIL refused 4xx): the next hop is tried, its error kept
      LinkLost             the conversation broke (timeout, disconnect, malformed
                           reply); carries the transient Reply for the recipients
                           whose outcome is not known yet

Transient (4xx): DNS SERVFAIL/timeout/no nameserver (LOOKUP_FAILED), connect refused
or timed out (CONNECTION_FAILED, unreachable), TLS not offered or failed, AUTH failed,
a lost or timed-out conversation (LOST, TIMED_OUT), any remote 4xx. Permanent (5xx):
NXDOMAIN (NOT_FOUND), null MX, mail loops, a remote 5xx, and the transport's own
refusals before sending (message too big, SMTPUTF8 or 8BITMIME not supported, unsafe
address) -- these last are per-recipient outcomes, not exceptions.

What the scheduler sees: ``NextHops.hops`` raises DeliveryError or returns hops;
``Deliverer.deliver`` raises DeliveryError or returns one RecipientOutcome per
recipient (its Reply classified by code as above). Anything else escaping an attempt
is a fault: the scheduler logs it with its traceback and retries the message later.
Once a transaction is under way results are per recipient, not exceptions: a remote
reply is a Reply (``remote_reply``), a broken conversation ``transport_reply``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import aiosmtplib
import dns.exception
import dns.resolver

from smtprelay.errors import RelayError
from smtprelay.replies import Reply

CONNECTION_FAILED = Reply(451, "4.4.1", "Connection failed")
LOST = Reply(451, "4.4.2", "Lost connection")
TIMED_OUT = Reply(451, "4.4.2", "Conversation timed out")
TLS_NOT_OFFERED = Reply(451, "4.7.4", "TLS is required, but was not offered by host")
TLS_FAILED = Reply(451, "4.7.5", "Cannot start TLS")
AUTH_FAILED = Reply(451, "4.7.8", "Authentication with the smarthost failed")
LOOKUP_FAILED = Reply(451, "4.4.3", "Host or domain name lookup failed")
NOT_FOUND = Reply(550, "5.1.2", "Host or domain name not found")

# What a broken conversation raises: aiosmtplib's own errors (disconnects, timeouts,
# malformed replies), the socket's, and asyncio's timeouts.
_LINK_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)


class DeliveryError(RelayError):
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


class HopSignal(RelayError):
    """Control flow inside one delivery; never raised out of ``Transport.deliver``."""


class TLSHandshakeFailed(HopSignal):
    pass


class StaleConnection(HopSignal):
    """A reused connection had been closed by the server: open a new one."""


class TryNextHop(HopSignal):
    def __init__(self, error: DeliveryError) -> None:
        super().__init__(str(error))
        self.error = error


class LinkLost(HopSignal):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def remote_reply(code: int, message: str) -> Reply:
    """A remote reply as a Reply; the enhanced code is taken from the text when present."""
    first, _, rest = message.partition(" ")
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(code)[0]:
        return Reply(code, first, rest)
    klass = str(code)[0]
    default = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}.get(klass, "4.0.0")
    return Reply(code, default, message)


def transport_reply(error: BaseException) -> Reply:
    """The transient reply for a broken conversation."""
    if isinstance(error, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return TIMED_OUT
    return LOST.with_text(f"{LOST.text}: {error}")


def tls_failed(detail: object, relay: str) -> DeliveryError:
    return DeliveryError(TLS_FAILED.with_text(f"{TLS_FAILED.text}: {detail}"), relay)


@contextlib.contextmanager
def lookup_errors(name: str) -> Iterator[None]:
    """DNS: NXDOMAIN is permanent NOT_FOUND; no server answering, a timeout or YXDOMAIN
    is transient LOOKUP_FAILED. NoAnswer passes through (the resolver decides)."""
    try:
        yield
    except dns.resolver.NXDOMAIN:
        raise DeliveryError(NOT_FOUND.with_text(f"{NOT_FOUND.text}: {name}")) from None
    except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.YXDOMAIN):
        raise DeliveryError(LOOKUP_FAILED.with_text(f"{LOOKUP_FAILED.text}: {name}")) from None


@contextlib.contextmanager
def connect_errors(hop: object) -> Iterator[None]:
    """TCP connect: any failure is DeliveryError ``unreachable``."""
    try:
        yield
    except (OSError, TimeoutError) as e:
        text = "connection timed out" if isinstance(e, TimeoutError) else e.strerror or str(e)
        raise DeliveryError(
            CONNECTION_FAILED.with_text(f"connect to {hop}: {text}"),
            str(hop),
            unreachable=True,
        ) from None


@contextlib.contextmanager
def starttls_errors() -> Iterator[None]:
    """STARTTLS: a handshake error or a refusal (e.g. 454) is TLSHandshakeFailed."""
    try:
        yield
    except (
        ssl.SSLError,
        aiosmtplib.SMTPConnectError,
        ConnectionError,
        aiosmtplib.SMTPResponseException,
    ) as e:
        raise TLSHandshakeFailed(str(e)) from None


@contextlib.contextmanager
def auth_errors(relay: str) -> Iterator[None]:
    """AUTH with a smarthost: any failure is DeliveryError AUTH_FAILED (transient)."""
    try:
        yield
    except aiosmtplib.SMTPAuthenticationError as e:
        raise DeliveryError(
            AUTH_FAILED.with_text(f"{AUTH_FAILED.text} ({e.code} {e.message})"), relay
        ) from None
    except aiosmtplib.SMTPException as e:
        raise DeliveryError(AUTH_FAILED.with_text(f"{AUTH_FAILED.text}: {e}"), relay) from None


@contextlib.contextmanager
def session_errors(relay: str) -> Iterator[None]:
    """Greeting, EHLO, TLS: an error reply keeps its code; TLS errors are TLS_FAILED;
    any other break is LOST or TIMED_OUT. DeliveryError and HopSignal pass through."""
    try:
        yield
    except aiosmtplib.SMTPResponseException as e:
        raise DeliveryError(remote_reply(e.code, e.message), relay) from None
    except ssl.SSLError as e:
        raise tls_failed(e, relay) from None
    except _LINK_ERRORS as e:
        raise DeliveryError(transport_reply(e), relay) from None


@contextlib.contextmanager
def link_errors() -> Iterator[None]:
    """Within a transaction: a broken conversation is LinkLost with its reply."""
    try:
        yield
    except _LINK_ERRORS as e:
        raise LinkLost(transport_reply(e)) from None
