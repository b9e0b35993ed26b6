"""The signing keys of ``[[dkim.keys]]``: PEM files read into what dkimpy signs with.

The algorithm follows the key: an RSA key signs ``rsa-sha256``, an Ed25519 key
``ed25519-sha256`` (RFC 8463). dkimpy wants an RSA key as PKCS#1 PEM and an Ed25519 key
as its 32-byte seed in base64, so every PEM form that ``cryptography`` reads (PKCS#1,
PKCS#8, as ``openssl genpkey`` or ``smtprelay dkim keygen`` write them) is accepted and
converted once, here. RSA keys under 1024 bits are refused: RFC 8301 forbids signing with
them, and receivers ignore such signatures.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from smtprelay.config import DkimKeySettings, DkimSettings
from smtprelay.errors import ConfigError

MIN_RSA_BITS = 1024  # RFC 8301 3.2


class DkimKeyError(ConfigError):
    """A ``[[dkim.keys]]`` key file is unusable; the message names the key and the file."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    private: bytes  # as dkimpy's sign() takes it
    public: str  # the p= value of the DNS record (base64)

    @property
    def key_type(self) -> str:
        """The k= value of the DNS record."""
        return "ed25519" if self.algorithm == "ed25519-sha256" else "rsa"

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


@dataclass(frozen=True)
class Keyring:
    """The keys by signing domain, in configuration order."""

    keys: tuple[DkimKey, ...] = ()

    def for_domain(self, domain: str) -> list[DkimKey]:
        return [key for key in self.keys if key.domain == domain]

    @property
    def domains(self) -> set[str]:
        return {key.domain for key in self.keys}


def load_keyring(settings: DkimSettings) -> Keyring:
    """Every configured key, read now; DkimKeyError naming the first one that is bad."""
    keys: list[DkimKey] = []
    seen: set[tuple[str, str]] = set()
    for number, entry in enumerate(settings.keys, 1):
        where = f"[[dkim.keys]] #{number} ({entry.selector}._domainkey.{entry.domain})"
        if (entry.domain, entry.selector) in seen:
            raise DkimKeyError(f"{where} selector: used twice for the same domain")
        seen.add((entry.domain, entry.selector))
        try:
            keys.append(read_key(entry))
        except DkimKeyError as e:
            raise DkimKeyError(f"{where} key_file {entry.key_file}: {e}") from None
    return Keyring(tuple(keys))


# ``cryptography`` is imported where a key is read, not with this module: the daemon
# loads this module on every start, and a relay without DKIM keys never needs it.


def read_key(entry: DkimKeySettings) -> DkimKey:
    from cryptography.hazmat.primitives import serialization

    try:
        pem = Path(entry.key_file).read_bytes()
    except OSError as e:
        raise DkimKeyError(e.strerror or str(e)) from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise DkimKeyError("the key is encrypted; give it without a passphrase") from None
    except ValueError:
        raise DkimKeyError("not a PEM private key (RSA or Ed25519)") from None
    return from_private_key(entry.domain, entry.selector, key)


def from_private_key(domain: str, selector: str, key: object) -> DkimKey:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        raw_public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return DkimKey(domain, selector, "ed25519-sha256", base64.b64encode(seed), _p(raw_public))
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                f"an RSA key of {key.key_size} bits; DKIM needs at least {MIN_RSA_BITS} "
                "(2048 recommended)"
            )
        pkcs1 = key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
        spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return DkimKey(domain, selector, "rsa-sha256", pkcs1, _p(spki))
    kind = (
        "an EC (ECDSA) key"
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else "a DSA key"
        if isinstance(key, dsa.DSAPrivateKey)
        else "an Ed448 key"
        if isinstance(key, ed448.Ed448PrivateKey)
        else "a key of another kind"
    )
    raise DkimKeyError(f"{kind}; DKIM signs with RSA or Ed25519")


def _p(public: bytes) -> str:
    """The public key as the record's ``p=`` shows it."""
    return base64.b64encode(public).decode()


def txt_record(key: DkimKey) -> str:
    """The record's text: ``v=DKIM1; k=rsa; p=...``."""
    return f"v=DKIM1; k={key.key_type}; p={key.public}"


def zone_line(key: DkimKey) -> str:
    """The record as a zone-file line, its text split into strings of at most 255
    octets (RFC 1035 3.3.14: a character-string's limit; an RSA-2048 record is ~410)."""
    text = txt_record(key)
    strings = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
    return f"{key.record_name}. IN TXT {strings}"


def describe(keys: Iterable[DkimKey]) -> list[str]:
    """One line per key for logs and check-config: ``s1._domainkey.example.com (rsa)``."""
    return [f"{key.record_name} ({key.key_type})" for key in keys]
