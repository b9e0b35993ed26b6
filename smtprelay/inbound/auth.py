"""SMTP AUTH credentials: the users file (``htpasswd -B`` compatible) and verification.

The users file holds one ``name:bcrypt-hash`` line per user; ``#`` starts a comment.
Verification runs bcrypt on a bounded pool of threads (it costs ~0.25 s of CPU at cost
12), so the event loop keeps serving other sessions. A successful check is remembered as
an HMAC of the password under a per-process random key, so an application that
authenticates on every connection does not pay bcrypt every time; the memo is void as
soon as the user's hash changes. Failed attempts are slowed down per client address
(:mod:`smtprelay.inbound.authlimit`).

An unknown user costs the same bcrypt work as a known one (a check against a dummy hash
of the file's usual cost), so the answer's timing does not tell which users exist.
Passwords count up to their first 72 bytes, as bcrypt defines and ``htpasswd -B``
hashes them (bcrypt 5 refuses longer input instead of truncating it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from smtprelay import safeio
from smtprelay.inbound.authlimit import BcryptPool, Throttle

_NAME = re.compile(r"[^\s:#][^\s:]*")
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
HASH_ROUNDS = 12
MIN_ROUNDS, MAX_ROUNDS = 4, 31  # what bcrypt accepts
MAX_PASSWORD = 72  # bytes of a password that bcrypt uses


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
        match = _BCRYPT.fullmatch(hashed)
        if not sep or not _NAME.fullmatch(name) or not match:
            raise UsersFileError(
                f"{path} line {number}: expected name:bcrypt-hash (htpasswd -B format)"
            )
        if not MIN_ROUNDS <= int(match.group(1)) <= MAX_ROUNDS:
            raise UsersFileError(
                f"{path} line {number}: bcrypt cost {match.group(1)} is "
                f"outside {MIN_ROUNDS}-{MAX_ROUNDS}"
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
    """The hash of the password's first 72 bytes, as ``htpasswd -B`` makes it."""
    return bcrypt.hashpw(
        password.encode("utf-8")[:MAX_PASSWORD], bcrypt.gensalt(rounds=HASH_ROUNDS)
    )


def password_truncated(password: str) -> bool:
    return len(password.encode("utf-8")) > MAX_PASSWORD


def dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash no password matches, of the cost most users' hashes have: checking an
    unknown user against it takes as long as checking a known one."""
    costs = Counter(int(hashed[4:6]) for hashed in users.values())
    cost = max(costs, key=lambda c: (costs[c], c)) if costs else HASH_ROUNDS
    # A valid salt and an all-zero digest: bcrypt does the full work, then compares.
    return bcrypt.gensalt(rounds=cost) + b"." * 31


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a hash bcrypt cannot use: read_users lets none through
        return False


@dataclass
class Authenticator:
    """Checks credentials against the users file, re-read whenever it changes on disk."""

    path: Path
    throttle: Throttle = field(default_factory=Throttle)
    pool: BcryptPool = field(default_factory=BcryptPool)
    _users: dict[str, bytes] = field(default_factory=dict)
    _dummy: bytes = field(default_factory=lambda: dummy_hash({}))
    _stamp: tuple[int, ...] | None = None
    _memo: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    _memo_key: bytes = field(default_factory=lambda: os.urandom(32))

    def inherit(self, old: Authenticator) -> None:
        """Take over a replaced authenticator's failure record, bcrypt pool and memo (a
        reload must not wipe a guessing client's penalty or double the bcrypt threads)."""
        self.throttle, self.pool = old.throttle, old.pool
        self._memo, self._memo_key = old._memo, old._memo_key

    def refresh(self) -> None:
        """Re-read the users file if it changed; raises UsersFileError if it is broken."""
        try:
            st = os.stat(self.path)
            # The inode changes with every rewrite (write to temp, rename), even when
            # size and a coarse mtime do not.
            stamp: tuple[int, ...] | None = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._users = read_users(self.path)
            self._dummy = dummy_hash(self._users)
            self._stamp = stamp

    @property
    def has_users(self) -> bool:
        return bool(self._users)

    async def verify(self, ip: str, username: str, password: bytes) -> bool:
        """True if the password is the user's. Waits for this client's turn and penalty
        (see :class:`~smtprelay.inbound.authlimit.Throttle`). No input makes it raise; a
        broken users file raises UsersFileError."""
        self.refresh()
        password = password[:MAX_PASSWORD]
        hashed = self._users.get(username)
        digest = hmac.new(
            self._memo_key,
            username.encode("utf-8", "surrogateescape") + b"\0" + password,
            hashlib.sha256,
        ).digest()
        if hashed is not None and self._memo.get(username) == (digest, hashed):
            return True  # only the right password gets here: no need to wait or slow down
        async with self.throttle.turn(ip) as turn:
            if hashed is not None and self._memo.get(username) == (digest, hashed):
                # Checked by another session of this client while this one waited for
                # its turn (an application opening several connections at once).
                turn.ok = True
                return True
            matched = await self.pool.run(
                turn.priority, _checkpw, password, hashed if hashed is not None else self._dummy
            )
            turn.ok = ok = matched and hashed is not None
        if ok:
            assert hashed is not None
            self._memo[username] = (digest, hashed)
        return ok
