"""Server TLS: load the configured certificate, or make a self-signed one on first run."""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import warnings
from pathlib import Path

from smtprelay.config import Settings
from smtprelay.errors import TLSError as TLSError

log = logging.getLogger("smtprelay.tls")

_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

_AEAD_ONLY = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!aDSS"


def certificate_paths(settings: Settings) -> tuple[Path, Path]:
    """The configured pair, or the self-signed pair kept under the spool directory."""
    if settings.tls.cert_file or settings.tls.key_file:
        return Path(settings.tls.cert_file), Path(settings.tls.key_file)
    base = Path(settings.spool.dir) / "tls"
    return base / "selfsigned-cert.pem", base / "selfsigned-key.pem"


def server_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load(context, settings)
    return context


def load(context: ssl.SSLContext, settings: Settings) -> None:
    """Put the configured certificate and versions into ``context``.

    Used again on reload: new handshakes on existing listeners then use the new
    certificate, and sessions already encrypted keep theirs.
    """
    cert, key = certificate_paths(settings)
    if not settings.tls.cert_file and not settings.tls.key_file and not cert.exists():
        make_self_signed(settings.server.hostname, cert, key)
    if bool(settings.tls.cert_file) != bool(settings.tls.key_file):
        raise TLSError("[tls] cert_file and key_file must be set together")
    context.minimum_version = _VERSIONS[settings.tls.min_version]
    if settings.tls.min_version in ("TLSv1", "TLSv1.1"):
        # Legacy devices: OpenSSL's default security level refuses these versions.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    else:
        # TLS 1.2: forward-secret AEAD suites only (no CBC, so no Lucky13-style padding
        # oracles); TLS 1.3 suites are all AEAD and not affected by this list.
        context.set_ciphers(_AEAD_ONLY)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise TLSError(f"[tls] {e.filename}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise TLSError(f"[tls] cannot load certificate {cert} / key {key}: {e}") from None


def legacy_server_context(settings: Settings) -> ssl.SSLContext:
    """The context of the ``[server] legacy_tls_listen`` listeners: TLS 1.0 and up."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_legacy(context, settings)
    return context


def load_legacy(context: ssl.SSLContext, settings: Settings) -> None:
    """:func:`load`, then TLS 1.0 and 1.1 allowed in this context only. OpenSSL 3 refuses
    them at security level 1 and above (their signatures use SHA-1 and MD5), hence
    level 0, with OpenSSL's default suites (the CBC ones old devices have)."""
    load(context, settings)
    with warnings.catch_warnings():  # Python warns that these versions are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")


def make_self_signed(hostname: str, cert_path: Path, key_path: Path) -> None:
    # Imported here, used once on a daemon's first start: every process that loads a
    # TLS context imports this module, and an inbound worker that imported
    # cryptography too started at 49.6 MB of RSS, against 41.2 MB without it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated a self-signed certificate for %s in %s", hostname, cert_path.parent)
