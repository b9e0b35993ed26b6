"""SMTP AUTH credentials: the users file (``htpasswd -B`` compatible) and verification.

The users file holds one ``name:bcrypt-hash`` line per user; ``#`` starts a comment.
Verification runs bcrypt in a worker thread (it costs ~0.25 s of CPU at cost 12), so the
event loop keeps serving other sessions. A successful check is remembered as an HMAC of
the password under a per-process random key, so an application that authenticates on
every connection does not pay bcrypt every time; the memo is void as soon as the user's
hash changes. Failed attempts are slowed down per client address.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from smtprelay import safeio

_NAME = re.compile(r"[^\s:#][^\s:]*")
_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
HASH_ROUNDS = 12


class UsersFileError(Exception):
    """The users file is unusable; the message names the file and line."""


def validate_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UsersFileError(f"invalid user name {name!r}: no spaces, ':' or leading '#'")


def read_users(path: Path) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return users
    except (OSError, UnicodeDecodeError) as e:
        raise UsersFileError(f"{path}: cannot read: {e}") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not _NAME.fullmatch(name) or not _BCRYPT.fullmatch(hashed):
            raise UsersFileError(
                f"{path} line {number}: expected name:bcrypt-hash (htpasswd -B format)"
            )
        users[name] = hashed.encode("ascii")
    return users


def write_users(path: Path, users: dict[str, bytes]) -> None:
    body = "".join(f"{name}:{hashed.decode('ascii')}\n" for name, hashed in users.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        safeio.write_file(dir_fd, path.name, body.encode("utf-8"))
        safeio.fsync_dir(dir_fd)
    finally:
        os.close(dir_fd)


def hash_password(password: str) -> bytes:
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=HASH_ROUNDS))


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


@dataclass
class Authenticator:
    """Checks credentials against the users file, re-read whenever it changes on disk."""

    path: Path
    failure_memory: float = 900.0  # forget a client's failures after this many quiet seconds
    max_delay: float = 10.0
    _users: dict[str, bytes] = field(default_factory=dict)
    _stamp: tuple[int, ...] | None = None
    _memo: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    _memo_key: bytes = field(default_factory=lambda: os.urandom(32))
    _failures: dict[str, _Failures] = field(default_factory=dict)
    _bcrypt_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))

    def refresh(self) -> None:
        """Re-read the users file if it changed; raises UsersFileError if it is broken."""
        try:
            st = os.stat(self.path)
            # The inode changes with every rewrite (write to temp, rename), even when
            # size and a coarse mtime do not.
            stamp: tuple[int, ...] | None = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns,
                                             st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._users = read_users(self.path)
            self._stamp = stamp

    @property
    def has_users(self) -> bool:
        return bool(self._users)

    def penalty(self, ip: str) -> float:
        """Seconds to wait before answering this client's AUTH: grows with its failures."""
        record = self._failures.get(ip)
        if record is None:
            return 0.0
        if time.monotonic() - record.last > self.failure_memory:
            del self._failures[ip]
            return 0.0
        return min(0.5 * record.count, self.max_delay)

    async def verify(self, ip: str, username: str, password: bytes) -> bool:
        self.refresh()
        hashed = self._users.get(username)
        ok = hashed is not None and await self._check(username, password, hashed)
        if ok:
            self._failures.pop(ip, None)
        else:
            record = self._failures.setdefault(ip, _Failures())
            record.count += 1
            record.last = time.monotonic()
        return ok

    async def _check(self, username: str, password: bytes, hashed: bytes) -> bool:
        digest = hmac.new(
            self._memo_key, username.encode() + b"\0" + password, hashlib.sha256
        ).digest()
        if self._memo.get(username) == (digest, hashed):
            return True
        async with self._bcrypt_slots:
            ok = await asyncio.to_thread(bcrypt.checkpw, password, hashed)
        if ok:
            self._memo[username] = (digest, hashed)
        return ok
