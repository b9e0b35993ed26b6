"""The bearer tokens file of ``[http] tokens_file``: one token per line, ``#`` comments.

The daemon checks every request against it (re-read when the file changes, so a token
is added or revoked without a restart); the CLI reads it to talk to the daemon.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path


def parse_tokens(text: str) -> list[str]:
    """Tokens in file order: blank lines and lines starting with ``#`` are skipped."""
    tokens = []
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token)
    return tokens


def read_tokens(path: Path) -> list[str]:
    """The tokens of ``path``; raises OSError when it cannot be read."""
    return parse_tokens(path.read_text(encoding="utf-8", errors="replace"))


class TokenFile:
    """Checks presented tokens; ``path`` None means no tokens are configured.

    ``strict``: a file that cannot be read at creation raises OSError."""

    def __init__(self, path: Path | None, *, strict: bool = True) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: list[bytes] = []
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
        except OSError as e:
            if strict:
                raise
            self._stamp = None
            self._tokens = []
            self.problem = f"the tokens file cannot be read: {e.strerror or e}"
            return
        self._stamp = stamp
        self._tokens = [t.encode() for t in tokens]
        self.problem = None if tokens else f"no tokens in {self.path}"

    def check(self, presented: str) -> bool:
        self.refresh()
        # aiohttp decodes header bytes that are not UTF-8 as surrogates: encode them
        # back to the bytes sent (which match no token) instead of failing.
        given = presented.encode("utf-8", "surrogateescape")
        ok = False
        for token in self._tokens:  # compare with every one: no early exit to time
            ok |= hmac.compare_digest(token, given)
        return ok
