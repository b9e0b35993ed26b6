"""The users file: one ``name:bcrypt-hash`` line per user (``htpasswd -B`` compatible).

Read by the inbound stage to check SMTP AUTH (:mod:`smtprelay.inbound.auth`) and read and
written by the command line (``smtprelay user add/delete/list``, :mod:`smtprelay.cli`), so it
lives outside both. ``#`` starts a comment; a malformed line refuses the whole file, naming
the line. Passwords count up to their first 72 bytes, as bcrypt defines and
``htpasswd -B`` hashes them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import bcrypt

from smtprelay import safeio
from smtprelay.errors import UsersFileError as UsersFileError

_NAME = re.compile(r"[^\s:#][^\s:]*")
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
HASH_ROUNDS = 12
MIN_ROUNDS, MAX_ROUNDS = 4, 31  # what bcrypt accepts
MAX_PASSWORD = 72  # bytes of a password that bcrypt uses


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
