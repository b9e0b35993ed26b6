"""``smtprelay dkim keygen DOMAIN SELECTOR``: make a signing key and print its DNS record.

Writes ``DIR/DOMAIN.SELECTOR.key`` (PKCS#8 PEM, mode 0600, created exclusively: an
existing key is never overwritten, as it may be published already) and prints
``SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=rsa; p=..."`` on standard output, the
text split into strings of at most 255 octets as a zone file needs for RSA-2048. The
hint for the configuration goes to standard error, so that the output can be appended to
a zone file as it is. No configuration file and no daemon are needed.

Rotation: make a key with a new selector, publish its record, add it to
``[[dkim.keys]]`` in place of the old one and reload (SIGHUP); leave the old record
published for a few days, until no message signed with it is still on its way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pydantic

from smtprelay import config
from smtprelay.cliactions import Actions
from smtprelay.dkimsign.keys import DkimKeyError, from_private_key, zone_line
from smtprelay.errors import RelayError

RSA_BITS = 2048  # RFC 8301 3.2: at least 1024, 2048 recommended; larger need long TXT


class KeygenError(RelayError):
    """The key cannot be made or written; the message says why (exit 1)."""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dkim keygen`` to the command parser."""
    dkim = Actions(commands, common, "dkim", "DKIM signing keys")
    keygen = dkim.add(
        "keygen",
        "write DIR/DOMAIN.SELECTOR.key (0600) and print its DNS TXT record",
        cmd_keygen,
        standalone=True,
    )
    keygen.add_argument("domain")
    keygen.add_argument("selector")
    keygen.add_argument(
        "--type",
        choices=("rsa", "ed25519"),
        default="rsa",
        help=f"rsa ({RSA_BITS} bits, the default) or ed25519 (RFC 8463)",
    )
    keygen.add_argument("--dir", default=".", help="where the key file goes (default: .)")


def cmd_keygen(args: argparse.Namespace, settings: config.Settings | None) -> int:
    # The same checks as the configuration's, so that the printed names are usable there.
    try:
        entry = config.DkimKeySettings(
            domain=args.domain, selector=args.selector, key_file="unused"
        )
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        what = "DOMAIN" if first["loc"][0] == "domain" else "SELECTOR"
        raise KeygenError(f"{what}: {first['msg'].removeprefix('Value error, ')}") from None
    # Here, not at the top: the daemon's command line loads this module on every start.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if args.type == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    try:
        record = zone_line(from_private_key(entry.domain, entry.selector, key))
    except DkimKeyError as e:  # not reached for keys made here; kept for a clear message
        raise KeygenError(str(e)) from None
    path = Path(args.dir) / f"{entry.domain}.{entry.selector}.key"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_key(path, pem)
    print(
        f"wrote {path}; publish the record below, then add to the configuration:\n"
        f'  [[dkim.keys]]\n  domain = "{entry.domain}"\n  selector = "{entry.selector}"\n'
        f'  key_file = "{path.resolve()}"',
        file=sys.stderr,
    )
    print(record)
    return 0


def write_key(path: Path, pem: bytes) -> None:
    """Create ``path`` with mode 0600 whatever the umask; never replace a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeygenError(f"{path}: exists already; choose a new selector") from None
    except OSError as e:
        raise KeygenError(f"{path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)
        raise KeygenError(f"{path}: {e.strerror or e}") from None
