"""The bearer tokens file of ``[http] tokens_file``: who may call the HTTP API, and what for.

One token per line, ``#`` comments and blank lines skipped. Two forms::

    3f9a0c...e1                                   a bare token: every scope (as before)
    erp sha256:9c1e...04 scopes=send,read senders=example.com,example.org

The second form is ``NAME SECRET [scopes=...] [senders=...]``: ``NAME`` appears in the
mail log and in message status (``submitted by api token erp``), ``SECRET`` is the token
itself or ``sha256:HEX``, the SHA-256 of it (``smtprelay token add`` writes that form
and prints the secret once); ``scopes`` (default: all) limits it to some of
:data:`SCOPES`; ``senders`` (default: any) to envelope and ``From`` addresses in those
domains. A bare token is named ``line-N`` after its line.

The daemon checks every request against it (re-read when the file changes, so a token
is added or revoked without a restart); the CLI reads it for a token it can use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

# send: POST /v1/messages; read: GET /v1/...; cancel: cancel and reschedule;
# templates: /v1/templates; admin: the queue API (/queue, /status, ...) and webhooks.
SCOPES = frozenset({"send", "read", "cancel", "templates", "admin"})
HASH_PREFIX = "sha256:"


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    scopes: frozenset[str]
    # Domains the token may send from; None: any.
    sender_domains: frozenset[str] | None = None
    # The secret as written in the file: the token itself, or "sha256:HEX".
    secret: str = ""

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def may_send_from(self, domain: str) -> bool:
        return self.sender_domains is None or domain.lower() in self.sender_domains

    @property
    def hashed(self) -> bool:
        return self.secret.startswith(HASH_PREFIX)


def hash_secret(secret: str | bytes) -> str:
    """What the file stores for ``secret`` (tokens are long random strings, so a plain
    SHA-256 is enough: there is nothing to guess from it)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return HASH_PREFIX + hashlib.sha256(raw).hexdigest()


def parse_tokens(text: str) -> list[Token]:
    """Tokens in file order; raises ValueError naming the line of a malformed one."""
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) == 1:
            tokens.append(Token(f"line-{number}", SCOPES, None, words[0]))
            continue
        try:
            tokens.append(_named(words))
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from None
    return tokens


def _named(words: list[str]) -> Token:
    name, secret, *options = words
    scopes: frozenset[str] = SCOPES
    senders: frozenset[str] | None = None
    for option in options:
        key, sep, value = option.partition("=")
        items = frozenset(v.strip().lower() for v in value.split(",") if v.strip())
        if not sep or not items:
            raise ValueError(f"{option!r}: expected scopes=a,b or senders=domain,...")
        if key == "scopes":
            unknown = items - SCOPES
            if unknown:
                raise ValueError(
                    f"unknown scope {', '.join(sorted(unknown))} "
                    f"(known: {', '.join(sorted(SCOPES))})"
                )
            scopes = items
        elif key == "senders":
            senders = items
        else:
            raise ValueError(f"unknown option {key!r} (scopes=, senders=)")
    if secret.startswith(HASH_PREFIX):
        digest = secret.removeprefix(HASH_PREFIX)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"token {name}: sha256: needs 64 lower-case hex digits")
    return Token(name, scopes, senders, secret)


def read_tokens(path: Path) -> list[Token]:
    """The tokens of ``path``; raises OSError when it cannot be read, ValueError when
    a line is malformed."""
    return parse_tokens(path.read_text(encoding="utf-8", errors="replace"))


def usable_by_cli(tokens: list[Token]) -> list[str]:
    """Secrets the CLI can present for the queue API: written in clear, scope admin."""
    return [t.secret for t in tokens if not t.hashed and t.allows("admin")]


class TokenFile:
    """Checks presented tokens; ``path`` None means no tokens are configured.

    ``strict``: a file that cannot be read (or parsed) at creation raises OSError
    (ValueError)."""

    def __init__(self, path: Path | None, *, strict: bool = True) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: list[Token] = []
        self.problem: str | None = None  # why no token can match, for the 401 message
        if path is None:
            self.problem = "no tokens are configured: set [http] tokens_file"
        else:
            self.refresh(strict=strict)

    def refresh(self, *, strict: bool = False) -> None:
        """Re-read the file if it changed. ``strict``: an unreadable file raises OSError
        (at start-up); otherwise it revokes every token until it is readable again."""
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            tokens = read_tokens(self.path)
        except (OSError, ValueError) as e:
            if strict:
                raise
            self._stamp = None
            self._tokens = []
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.problem = f"the tokens file cannot be read: {reason}"
            return
        self._stamp = stamp
        self._tokens = tokens
        self.problem = None if tokens else f"no tokens in {self.path}"

    def check(self, presented: str) -> Token | None:
        """The token ``presented`` is, or None."""
        self.refresh()
        # aiohttp decodes header bytes that are not UTF-8 as surrogates: encode them
        # back to the bytes sent (which match no token) instead of failing.
        given = presented.encode("utf-8", "surrogateescape")
        hashed = hash_secret(given).encode()
        found = None
        for token in self._tokens:  # compare with every one: no early exit to time
            wanted = token.secret.encode()
            if hmac.compare_digest(wanted, hashed if token.hashed else given):
                found = token
        return found
