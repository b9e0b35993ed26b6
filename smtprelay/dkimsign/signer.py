"""Sign one outgoing message with every key of its ``From:`` domain.

Called by the delivery transport on the exact bytes it sends (after line folding and
after any rewrite of the message), so that what the receiver verifies is what was
signed. The header list is RFC 6376 5.4.1's recommended set (dkimpy's ``SHOULD`` list:
From, Sender, Reply-To, Subject, Date, Message-ID, To, Cc, MIME-Version, Content-*,
Resent-*, In-Reply-To, References, List-*), each field as often as it is present, with
``From`` signed once more than present ("oversigned", 5.4.2) so that a second From
added on the way breaks the signature instead of being shown to the reader.
Canonicalization is relaxed/relaxed: header and white-space changes by next hops
(refolding, a tab for a space) do not break it.

A message that already carries a DKIM-Signature with ``d=`` its From: domain (the
application signed it, or an earlier relay) is left alone, as is one without a single
From domain (no From, several). A message dkimpy cannot sign (broken headers) goes out
unsigned, with a warning in the log: the signature is worth less than the delivery.

:class:`Signer` keeps the signature fields of the last messages it signed, keyed by
queue ID and a digest of the bytes: a message with recipients at several destinations,
or retried, is signed once as long as the bytes to send stay the same (a digest costs a
fraction of dkimpy's canonicalization), and every copy carries the same signature. Bytes
that differ (a rewrite per route, a changed fold limit) miss the cache and are signed.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from smtprelay import maillog
from smtprelay.dkimsign.keys import DkimKey, Keyring

CANONICALIZE = (b"relaxed", b"relaxed")
CACHE_SIZE = 4096  # signature fields (a few hundred octets each) of recent messages
_TAG_D = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Signed:
    """What signing added in front of a message, and why nothing when nothing."""

    fields: bytes = b""  # DKIM-Signature fields, CRLF-terminated
    keys: tuple[DkimKey, ...] = ()
    problem: str = ""  # a reason to log: the message could not be signed


_loading = threading.Lock()  # the first signatures may be made on executor threads


def dkimpy() -> Any:  # the dkim module (untyped)
    """dkimpy, its RSA signing through OpenSSL (~1 ms instead of ~20 ms a signature).
    Loaded at the first signature, not with this module: dkimpy and ``cryptography``
    are ~11 MB of a main process that signs nothing (no DKIM key configured)."""
    with _loading:
        import dkim

        from smtprelay.dkimsign import fastrsa

        fastrsa.install()
    return dkim


def header_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, unfolded value) of each header field of a CRLF message."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name.strip().lower(), value))
    return fields


def from_domain(fields: list[tuple[bytes, bytes]]) -> str | None:
    """The one domain of the From: field's addresses; None if there is none, or more
    than one From field or domain (such a message is not signed for anyone)."""
    values = [value for name, value in fields if name == b"from"]
    if len(values) != 1:
        return None
    text = values[0].decode("utf-8", "replace")
    domains = {
        address.rpartition("@")[2].strip().rstrip(".").lower()
        for _, address in email.utils.getaddresses([text])
        if "@" in address
    }
    return domains.pop() if len(domains) == 1 else None


def signed_domains(fields: list[tuple[bytes, bytes]]) -> set[str]:
    """The d= of every DKIM-Signature already in the message."""
    found: set[str] = set()
    for name, value in fields:
        if name == b"dkim-signature":
            match = _TAG_D.search(re.sub(rb"\s+", b" ", value))
            if match:
                found.add(match.group(1).decode("ascii", "replace").rstrip(".").lower())
    return found


def signatures(message: bytes, keyring: Keyring) -> Signed:
    """The DKIM-Signature fields for ``message`` (CRLF line endings), one per key of
    its From: domain; nothing if it has no keys or is signed for that domain already."""
    if not keyring.keys:
        return Signed()
    fields = header_fields(message)
    domain = from_domain(fields)
    if domain is None:
        return Signed()
    keys = keyring.for_domain(domain)
    if not keys or domain in signed_domains(fields):
        return Signed()
    out: list[bytes] = []
    dkim = dkimpy()
    try:
        parsed = dkim.DKIM(message, linesep=b"\r\n")
        for key in keys:
            field = parsed.sign(
                key.selector.encode(),
                key.domain.encode(),
                key.private,
                signature_algorithm=key.algorithm.encode(),
                canonicalize=CANONICALIZE,
            )
            out.append(field if field.endswith(b"\r\n") else field + b"\r\n")
    except dkim.DKIMException as e:
        return Signed(problem=f"not signed for {domain}: {e}")
    except Exception as e:  # dkimpy on input it did not expect: deliver, unsigned
        return Signed(problem=f"not signed for {domain}: {type(e).__name__}: {e}")
    return Signed(b"".join(out), tuple(keys))


def sign(message: bytes, keyring: Keyring) -> bytes:
    """``message`` with a DKIM-Signature field per key of its From: domain in front
    (or as it is, when it is not to be signed)."""
    return signatures(message, keyring).fields + message


# Larger messages are canonicalized and hashed on a thread, not on the event loop.
THREAD_ABOVE = 256 * 1024


class Signer:
    """Signs with the keys of the running configuration; remembers recent signatures.

    Used from the event loop only (the cache is not locked); the work on a large
    message runs in the loop's default executor.
    """

    def __init__(self, keyring: Keyring | None = None, cache_size: int = CACHE_SIZE) -> None:
        self.keyring = keyring or Keyring()
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bytes], Signed] = OrderedDict()
        self.computed = 0  # signings done (not counting those found in the cache)

    def replace(self, keyring: Keyring) -> None:
        """Keys reloaded (SIGHUP): new signatures from now on, with the new selectors."""
        self.keyring = keyring
        self._cache.clear()

    async def sign(self, message: bytes, qid: str) -> bytes:
        """``message`` as it is to be sent: signed (once per queue ID and content)."""
        keyring = self.keyring
        if not keyring.keys:
            return message
        key = (qid, hashlib.blake2b(message, digest_size=16).digest())
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found.fields + message
        if len(message) > THREAD_ABOVE:
            loop = asyncio.get_running_loop()
            signed = await loop.run_in_executor(None, signatures, message, keyring)
        else:
            signed = signatures(message, keyring)
        self.computed += 1
        if signed.problem:
            maillog.dkim_not_signed(qid, signed.problem)
        for used in signed.keys:
            maillog.dkim_signed(qid, used.selector, used.domain, used.algorithm)
        if keyring is self.keyring:  # not reloaded meanwhile
            self._cache[key] = signed
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return signed.fields + message
