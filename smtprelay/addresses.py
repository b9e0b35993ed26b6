"""Mail addresses as both stages see them: the domain an address belongs to.

Shared vocabulary: the inbound stage checks a recipient's domain against the relay
policy, the delivery stage groups recipients by destination domain, and the HTTP queue
view filters by it, so the rule lives here once rather than inside one of the stages.
Parsing an address off the SMTP command line stays in :mod:`smtprelay.inbound.address`.
"""

from __future__ import annotations


def domain_of(address: str) -> str:
    """The domain part, lower-cased and without a trailing dot (``a@Example.org.`` ->
    ``example.org``); ``""`` for the null path."""
    return address.rpartition("@")[2].rstrip(".").lower()
