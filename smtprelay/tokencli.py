"""``smtprelay token add|list|remove``: the named HTTP API tokens of ``[http] tokens_file``.

``add`` makes a random secret, prints it once and stores only its SHA-256
(``NAME sha256:HEX scopes=... senders=...``, the format :mod:`smtprelay.web.tokens`
reads); ``list`` shows names and scopes, never a secret; ``remove`` drops a name. The
file is rewritten whole through a fsynced temp file and a rename (mode 0640), keeping
its comments and other lines as they were: the daemon re-reads it on change, and never
sees half of it. No daemon is needed.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from smtprelay import config, safeio
from smtprelay.cliactions import Actions
from smtprelay.errors import RelayError
from smtprelay.web.tokens import SCOPES, Token, hash_secret, parse_tokens

EXIT_OK = 0
SECRET_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class TokenFileError(RelayError):
    """The command cannot do what was asked; the message says why."""


def _path(settings: config.Settings) -> Path:
    if not settings.http.tokens_file:
        raise config.ConfigError("[http] tokens_file: not set; the token commands need it")
    return Path(settings.http.tokens_file)


def _read(path: Path) -> tuple[str, list[Token]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", []
    try:
        return text, parse_tokens(text)
    except ValueError as e:
        raise TokenFileError(f"{path}: {e}; fix it first") from None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        safeio.write_file(fd, path.name, text.encode("utf-8"))
        os.chmod(path.name, 0o640, dir_fd=fd)  # whatever the umask: the daemon's group reads
        safeio.fsync_dir(fd)
    finally:
        os.close(fd)


def _list_of(value: str, what: str) -> list[str]:
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    if not items:
        raise TokenFileError(f"--{what}: give at least one, separated by commas")
    return items


def cmd_add(args: argparse.Namespace, settings: config.Settings) -> int:
    path = _path(settings)
    name: str = args.name
    if not _NAME.fullmatch(name) or name.startswith("line-"):
        raise TokenFileError(
            f"invalid token name {name!r}: letters, digits, '.', '_', '-' "
            "(up to 64; 'line-N' names the bare tokens)"
        )
    scopes = _list_of(args.scopes, "scopes")
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise TokenFileError(
            f"unknown scope {', '.join(unknown)} (known: {', '.join(sorted(SCOPES))})"
        )
    text, tokens = _read(path)
    if any(t.name == name for t in tokens):
        raise TokenFileError(f"a token named {name} exists in {path}; remove it first")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    line = f"{name} {hash_secret(secret)} scopes={','.join(scopes)}"
    if args.senders:
        line += f" senders={','.join(_list_of(args.senders, 'senders'))}"
    if text and not text.endswith("\n"):
        text += "\n"
    _write(path, text + line + "\n")
    print(
        f"token {name} added to {path} (scopes {','.join(scopes)}); its secret, shown only now:",
        file=sys.stderr,
    )
    print(secret)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, settings: config.Settings) -> int:
    _, tokens = _read(_path(settings))
    for token in tokens:
        senders = ",".join(sorted(token.sender_domains)) if token.sender_domains else "any"
        kind = "hashed" if token.hashed else "clear"
        print(f"{token.name}\tscopes={','.join(sorted(token.scopes))}\tsenders={senders}\t{kind}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, settings: config.Settings) -> int:
    path = _path(settings)
    text, tokens = _read(path)
    if not any(t.name == args.name for t in tokens):
        raise TokenFileError(f"no token named {args.name} in {path}")
    kept = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        words = line.split()
        named = len(words) > 1 and words[0] == args.name
        bare = len(words) == 1 and args.name == f"line-{number}"
        if not (named or bare):
            kept.append(line)
    _write(path, "".join(kept))
    print(f"token {args.name} removed from {path}")
    return EXIT_OK


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``token add|list|remove`` to the command parser."""
    token = Actions(commands, common, "token", "manage the HTTP API tokens ([http] tokens_file)")
    add = token.add("add", "create a named token; prints its secret once", cmd_add)
    add.add_argument("name")
    add.add_argument(
        "--scopes",
        required=True,
        metavar="LIST",
        help=f"comma-separated, of: {', '.join(sorted(SCOPES))}",
    )
    add.add_argument(
        "--senders",
        metavar="DOMAINS",
        help="comma-separated sender domains it may send from (default: any)",
    )
    token.add("list", "names and scopes, no secrets", cmd_list)
    token.add("remove", "revoke a token by name", cmd_remove).add_argument("name")
