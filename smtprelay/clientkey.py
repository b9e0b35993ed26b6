"""What a client is counted as by the slow-downs and limits (SMTP AUTH failures, HTTP
token failures, HTTP connections): its IPv4 address, or its IPv6 /64, since one host
can use a whole /64 and would otherwise escape them by changing address."""

from __future__ import annotations

import ipaddress


def client_key(ip: str) -> str:
    """The IPv4 address (an IPv4-mapped IPv6 one too), or the IPv6 /64; anything that
    is not an address is its own key."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
