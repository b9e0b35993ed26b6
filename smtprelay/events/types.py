"""The event vocabulary of issue 13: type names and the patterns webhooks subscribe with.

Pure (no imports from the rest of the package): the configuration validates
``[[webhooks]] events`` with it before anything else is built.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_SCHEDULED = "message.scheduled"
    MESSAGE_REJECTED = "message.rejected"
    MESSAGE_CANCELED = "message.canceled"
    RECIPIENT_DELIVERED = "recipient.delivered"
    RECIPIENT_DEFERRED = "recipient.deferred"
    RECIPIENT_BOUNCED = "recipient.bounced"
    RECIPIENT_EXPIRED = "recipient.expired"
    NOTICE_SENT = "notice.sent"


TYPES = frozenset(t.value for t in EventType)
PREFIXES = frozenset(t.split(".")[0] for t in TYPES)


def valid_pattern(pattern: str) -> bool:
    """An event type, ``"*"``, or ``"PREFIX.*"`` for a known prefix (``"recipient.*"``)."""
    if pattern in TYPES or pattern == "*":
        return True
    prefix, dot, star = pattern.partition(".")
    return bool(dot) and star == "*" and prefix in PREFIXES


def matches(patterns: tuple[str, ...] | list[str], event_type: str) -> bool:
    """Does a subscription (empty: everything) take ``event_type``?"""
    if not patterns:
        return True
    for pattern in patterns:
        if pattern in ("*", event_type):
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False
