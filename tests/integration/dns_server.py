"""A small authoritative DNS server on a loopback port, for the delivery tests.

Built on dnslib, run in threads (UDP and TCP on the same port of 127.0.0.1). It serves
a mutable zone the test changes while the relay runs:

* ``mx(domain, preference, host)``, ``a(host, ip)``, ``aaaa(host, ip)``;
* ``null_mx(domain)`` -- the single ``MX 0 .`` of RFC 7505;
* any name not in the zone is NXDOMAIN; a name in the zone without records of the
  asked type is NOERROR with an empty answer (NODATA), with an SOA for negative caching;
* ``servfail(name)`` makes every query for that name answer SERVFAIL until turned off;
* ``txt(name, *strings)`` -- a TXT record (a DKIM key record, split in strings of at most
  255 octets as a zone file has it).

``TestDNSServer(address, port)`` serves on a fixed address and port instead, e.g. port 53
of a 127.0.0.x address for a tool that reads only /etc/resolv.conf (opendkim_tool.py).

TTLs are 1 second so that a test can change an answer and see the relay pick it up.
Only loopback addresses (127.0.0.0/8, ::1) may be put in the zone: the relay under
test must never be sent anywhere else.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import Counter
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, SOA, TXT, A, DNSLabel, DNSRecord  # type: ignore[import-untyped]
from dnslib.server import DNSLogger, DNSServer  # type: ignore[import-untyped]

LOOPBACK = "127.0.0.1"
TTL = 1


def _name(name: str) -> str:
    return name.lower().rstrip(".")


class _Quiet(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data")


class Zone:
    """name -> records; thread-safe; answers queries (the dnslib resolver interface)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, list[tuple[int, Any]]] = {}  # name -> [(QTYPE, rdata)]
        self._servfail: set[str] = set()
        self.queries: Counter[tuple[str, str]] = Counter()  # (name, type) -> count

    # --- changing the zone ----------------------------------------------------------

    def _add(self, name: str, qtype: int, rdata: Any) -> None:
        with self._lock:
            self._records.setdefault(_name(name), []).append((qtype, rdata))

    def mx(self, domain: str, preference: int, host: str) -> None:
        self._add(domain, QTYPE.MX, MX(host.rstrip(".") + ".", preference))

    def null_mx(self, domain: str) -> None:
        self._add(domain, QTYPE.MX, MX(".", 0))

    def a(self, host: str, ip: str) -> None:
        address = ipaddress.IPv4Address(ip)
        if not address.is_loopback:
            raise ValueError(f"{ip}: the test DNS server serves loopback addresses only")
        self._add(host, QTYPE.A, A(ip))

    def aaaa(self, host: str, ip: str) -> None:
        if ipaddress.IPv6Address(ip) != ipaddress.IPv6Address("::1"):
            raise ValueError(f"{ip}: the test DNS server serves ::1 only")
        self._add(host, QTYPE.AAAA, AAAA(ip))

    def txt(self, name: str, *strings: str) -> None:
        if any(len(s.encode()) > 255 for s in strings):
            raise ValueError("a TXT character-string holds at most 255 octets")
        self._add(name, QTYPE.TXT, TXT([s.encode() for s in strings]))

    def exists(self, name: str) -> None:
        """The name exists but has no records (answers are NODATA, not NXDOMAIN)."""
        with self._lock:
            self._records.setdefault(_name(name), [])

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(_name(name), None)

    def servfail(self, name: str, on: bool = True) -> None:
        with self._lock:
            if on:
                self._servfail.add(_name(name))
            else:
                self._servfail.discard(_name(name))

    # --- answering ----------------------------------------------------------------------

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()  # aa=1, ra=1
        qname = request.q.qname
        name = _name(str(qname))
        qtype = request.q.qtype
        with self._lock:
            self.queries[(name, QTYPE.get(qtype))] += 1
            if name in self._servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            records = self._records.get(name)
            if records is None:
                reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(self._soa(name))
                return reply
            matching = [rdata for t, rdata in records if t == qtype]
        for rdata in matching:
            reply.add_answer(RR(qname, qtype, rdata=rdata, ttl=TTL))
        if not matching:
            reply.add_auth(self._soa(name))
        return reply

    @staticmethod
    def _soa(name: str) -> RR:
        zone = name.split(".")[-1] + "." if name else "."
        return RR(
            DNSLabel(zone),
            QTYPE.SOA,
            ttl=TTL,
            rdata=SOA("ns.test.", "hostmaster.test.", (1, 60, 60, 60, TTL)),
        )


def _free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (a few tries, bounded)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


class TestDNSServer:
    """``with TestDNSServer() as dns: dns.zone.mx(...)``; ``dns.nameserver`` for the config."""

    __test__ = False  # not a pytest test class

    def __init__(self, address: str = LOOPBACK, port: int = 0) -> None:
        self.zone = Zone()
        self.address = address
        self.port = port
        self._fixed = port != 0
        self._servers: list[DNSServer] = []

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> TestDNSServer:
        last: OSError | None = None
        for _ in range(1 if self._fixed else 5):  # taken between the probe and the bind
            port = self.port if self._fixed else _free_udp_and_tcp_port()
            servers: list[DNSServer] = []
            try:
                for tcp in (False, True):
                    servers.append(
                        DNSServer(
                            self.zone, address=self.address, port=port, tcp=tcp, logger=_Quiet()
                        )
                    )
            except OSError as e:
                for server in servers:
                    server.server.server_close()
                last = e
                continue
            self.port, self._servers = port, servers
            for server in servers:
                # A short poll interval: shutdown() waits up to one interval.
                server.thread = threading.Thread(
                    target=server.server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"dns {'tcp' if server is servers[1] else 'udp'}",
                    daemon=True,
                )
                server.thread.start()
            return self
        raise RuntimeError(f"cannot start the test DNS server: {last}")

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
            server.thread.join(5)
        self._servers = []

    def __enter__(self) -> TestDNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
