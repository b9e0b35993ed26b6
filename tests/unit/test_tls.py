"""smtprelay.tls: a daemon without a configured certificate makes a self-signed one
under its spool on its first start, and loads it then and on every later start."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from cryptography import x509

from smtprelay import config, tls


def test_without_a_certificate_a_self_signed_one_is_made_once_and_loaded(tmp_path: Path) -> None:
    conf = tmp_path / "smtprelay.toml"
    conf.write_text(f'[server]\nhostname = "relay.test"\n[spool]\ndir = "{tmp_path / "spool"}"\n')
    settings = config.load(conf)
    tls.server_context(settings)
    cert, key = tls.certificate_paths(settings)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    made = x509.load_pem_x509_certificate(cert.read_bytes())
    names = made.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["relay.test"]
    again = tls.server_context(settings)  # a later start keeps the pair it made
    assert isinstance(again, ssl.SSLContext)
    assert x509.load_pem_x509_certificate(cert.read_bytes()).serial_number == made.serial_number
