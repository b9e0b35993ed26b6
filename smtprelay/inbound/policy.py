"""Who may relay what: trusted networks, authentication, domain allow-lists, limits.

Pure decisions, no I/O: the protocol asks, this module answers with a Reply or None.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from smtprelay import replies
from smtprelay.addresses import domain_of, in_domains
from smtprelay.config import RelaySettings
from smtprelay.replies import Reply


@dataclass(frozen=True)
class Policy:
    relay: RelaySettings
    max_recipients: int

    def is_trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.relay.trusted_networks)

    def check_sender(self, sender: str) -> Reply | None:
        allowed = self.relay.allowed_sender_domains
        # The null sender (bounces) carries no domain; it is never refused here.
        if sender and allowed and not in_domains(domain_of(sender), allowed):
            return replies.SENDER_DOMAIN_DENIED
        return None

    def check_recipient(self, recipient: str, *, may_relay: bool, count: int) -> Reply | None:
        """``count`` is the number of recipients already accepted in this transaction."""
        if not may_relay:
            return replies.RELAY_DENIED
        allowed = self.relay.allowed_recipient_domains
        if allowed and not in_domains(domain_of(recipient), allowed):
            return replies.RECIPIENT_DOMAIN_DENIED
        if count >= self.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        return None
