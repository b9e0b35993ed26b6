"""Where mail for a domain goes: MX lookup by the rules of RFC 5321 section 5.1.

* MX records by preference, random order among equal preference;
* no MX records: the domain itself is the implicit MX (its A/AAAA records);
* null MX (RFC 7505, a single ``MX 0 .``): permanent failure ``5.1.10``;
* NXDOMAIN: permanent ``5.1.2``; SERVFAIL or timeout: temporary ``4.4.3``;
* an MX that is this relay itself: only more preferred MXs are used, none -> ``5.4.6``;
* internationalised domains are looked up by their IDNA (A-label) form;
* answers are cached for their TTL (dnspython's cache).

DNS exceptions become DeliveryError in errors.py (``lookup_errors``); an address
look-up that fails is not an error here, just an exchanger with no addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Iterable

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from smtprelay.delivery import errors
from smtprelay.delivery.errors import LOOKUP_FAILED, NOT_FOUND, DeliveryError
from smtprelay.delivery.outcome import Hop
from smtprelay.replies import Reply
from smtprelay.units import Endpoint

NULL_MX = Reply(556, "5.1.10", "Recipient domain does not accept mail (null MX)")
LOOP = Reply(554, "5.4.6", "Mail for this domain loops back to myself")
NO_ADDRESS = Reply(451, "4.4.3", "No address found for any mail exchanger")


class Resolver:
    def __init__(
        self,
        nameservers: Iterable[Endpoint],
        *,
        port: int,
        own_names: Iterable[str],
        own_endpoints: Iterable[Endpoint],
        timeout: float = 10.0,
    ) -> None:
        servers = list(nameservers)
        self._dns = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(s.host, s.port) for s in servers]
        self._dns.lifetime = timeout
        self._dns.timeout = min(timeout, 3.0)
        self._dns.cache = dns.resolver.Cache()
        self.port = port
        self.own_names = {n.lower().rstrip(".") for n in own_names}
        self.own_endpoints = set(own_endpoints)

    async def mail_exchangers(self, domain: str) -> list[Hop]:
        """Hops for ``domain`` in the order to try them; raises DeliveryError."""
        if domain.startswith("[") and domain.endswith("]"):
            return [self._literal_hop(domain)]
        name = _idna(domain)
        try:
            with errors.lookup_errors(domain):
                answer = await self._dns.resolve(name, "MX")
            records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
        except dns.resolver.NoAnswer:
            records = [(0, name)]  # implicit MX
        if len(records) == 1 and records[0][1] in ("", "."):
            raise DeliveryError(NULL_MX.with_text(f"{NULL_MX.text}: {domain}"))
        exchangers = _order(records)
        exchangers = self._below_self(exchangers, domain)
        hops: list[Hop] = []
        lookups = await asyncio.gather(*(self._addresses(host) for host in exchangers))
        for host, addresses in zip(exchangers, lookups, strict=True):
            hops += [Hop(host, address, self.port) for address in addresses]
        hops = [h for h in hops if Endpoint(h.address, h.port) not in self.own_endpoints]
        if not hops:
            if any(lookups):
                raise DeliveryError(LOOP.with_text(f"{LOOP.text}: {domain}"))
            raise DeliveryError(NO_ADDRESS.with_text(f"{NO_ADDRESS.text} of {domain}"))
        return hops

    async def host_hops(self, endpoint: Endpoint) -> list[Hop]:
        """Hops for a fixed next hop ("host:port" of a route or smarthost)."""
        try:
            ipaddress.ip_address(endpoint.host)
            return [Hop(endpoint.host, endpoint.host, endpoint.port)]
        except ValueError:
            pass
        addresses = await self._addresses(_idna(endpoint.host))
        if not addresses:
            raise DeliveryError(LOOKUP_FAILED.with_text(f"{LOOKUP_FAILED.text}: {endpoint.host}"))
        return [Hop(endpoint.host, address, endpoint.port) for address in addresses]

    def _below_self(self, exchangers: list[str], domain: str) -> list[str]:
        """RFC 5321 5.1: if we are an MX, use only the ones preferred over us."""
        for i, host in enumerate(exchangers):
            if host.lower().rstrip(".") in self.own_names:
                if i == 0:
                    raise DeliveryError(LOOP.with_text(f"{LOOP.text}: {domain}"))
                return exchangers[:i]
        return exchangers

    async def _addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of one exchanger; a failed lookup yields none."""
        results = await asyncio.gather(
            self._dns.resolve(host, "A"), self._dns.resolve(host, "AAAA"), return_exceptions=True
        )
        addresses: list[str] = []
        for result in results:
            if isinstance(result, dns.resolver.Answer):
                addresses += [r.to_text() for r in result]
            elif not isinstance(result, dns.exception.DNSException):
                raise result
        return addresses

    def _literal_hop(self, domain: str) -> Hop:
        literal = domain[1:-1]
        text = literal[5:] if literal[:5].upper() == "IPV6:" else literal
        try:
            address = str(ipaddress.ip_address(text))
        except ValueError:
            raise DeliveryError(NOT_FOUND.with_text(f"Bad address literal {domain}")) from None
        return Hop(domain, address, self.port)


def _order(records: list[tuple[int, str]]) -> list[str]:
    shuffled = records[:]
    random.shuffle(shuffled)
    shuffled.sort(key=lambda r: r[0])  # stable: equal preferences stay shuffled
    seen: list[str] = []
    for _, host in shuffled:
        if host not in seen:
            seen.append(host)
    return seen


def _idna(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
