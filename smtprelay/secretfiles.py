"""Secrets kept in files of their own (passwords, OAuth client secrets, refresh tokens),
so that they never sit in the configuration file, in `check-config` output or in logs.

Read at start and on SIGHUP; a refresh token that the relay is handed (``smtprelay oauth
login``, or a rotated one from the token endpoint) is written back atomically with mode
0600, so that no reader ever sees half a token and no other user any of it.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_secret(path: str, key: str) -> str:
    """The first line of ``path`` (without its newline); OSError names ``key``."""
    try:
        with open(Path(path), encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise OSError(e.errno, f"{key} {path}: {e.strerror}") from None


def write_secret(path: str, secret: str) -> None:
    """Replace ``path`` with ``secret`` + newline, mode 0600, atomically (temp + rename)."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older temp file of the same name keeps its mode otherwise
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
