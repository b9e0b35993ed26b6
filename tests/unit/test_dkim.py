"""DKIM keys, signing and keygen (smtprelay.dkimsign), with dkimpy as the verifier."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shlex
import stat
from pathlib import Path
from typing import Any

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from smtprelay import cli, config, maillog
from smtprelay.config import DkimKeySettings, DkimSettings
from smtprelay.dkimsign import DkimKeyError, Keyring, Signer, fastrsa, load_keyring, sign
from smtprelay.dkimsign.keys import DkimKey, read_key, txt_record, zone_line
from smtprelay.dkimsign.signer import THREAD_ABOVE, dkimpy, signatures

DOMAIN = "example.com"
MESSAGE = (
    b"Received: from client.test by relay.test; Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"From: App <app@Example.COM>\r\n"
    b"To: bob@dest.test\r\n"
    b"Subject: hello\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"\r\n"
    b"Body  with   spaces \r\n"
)

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, key: object, fmt: serialization.PrivateFormat) -> Path:
    assert isinstance(
        key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    return path


def _key(tmp_path: Path, selector: str, kind: str = "rsa", domain: str = DOMAIN) -> DkimKey:
    key: object = _RSA if kind == "rsa" else ed25519.Ed25519PrivateKey.generate()
    path = _write(tmp_path / f"{selector}.key", key, serialization.PrivateFormat.PKCS8)
    return read_key(DkimKeySettings(domain=domain, selector=selector, key_file=str(path)))


def _dns(*keys: DkimKey) -> object:
    records = {f"{k.record_name}.".encode(): txt_record(k).encode() for k in keys}
    return lambda name, timeout=5: records.get(name)


def _verified_selectors(message: bytes, *keys: DkimKey) -> list[bytes]:
    parsed = dkim.DKIM(message)
    found = []
    for index in range(message.count(b"DKIM-Signature:")):
        assert parsed.verify(idx=index, dnsfunc=_dns(*keys)), index
        found.append(parsed.selector)
    return found


# --- keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_rsa_keys_in_either_pem_form_sign_rsa_sha256(
    tmp_path: Path, fmt: serialization.PrivateFormat
) -> None:
    path = _write(tmp_path / "k.pem", _RSA, fmt)
    key = read_key(DkimKeySettings(domain=DOMAIN, selector="s1", key_file=str(path)))
    assert (key.algorithm, key.key_type) == ("rsa-sha256", "rsa")
    assert txt_record(key).startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # SPKI, RSA-2048


def test_an_ed25519_key_signs_ed25519_sha256(tmp_path: Path) -> None:
    key = _key(tmp_path, "ed", "ed25519")
    assert (key.algorithm, key.key_type) == ("ed25519-sha256", "ed25519")
    assert len(key.public) == 44  # 32 raw octets in base64 (RFC 8463 3)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "No such file or directory"),
        (b"hello\n", "not a PEM private key (RSA or Ed25519)"),
        ("ec", "an EC (ECDSA) key; DKIM signs with RSA or Ed25519"),
        ("encrypted", "the key is encrypted; give it without a passphrase"),
    ],
)
def test_a_bad_key_file_is_named_with_its_key(
    tmp_path: Path, content: bytes | str | None, problem: str
) -> None:
    path = tmp_path / "bad.key"
    if content == "ec":
        _write(path, ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8)
    elif content == "encrypted":
        path.write_bytes(
            _RSA.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
        )
    elif isinstance(content, bytes):
        path.write_bytes(content)
    good = _write(tmp_path / "good.key", _RSA, serialization.PrivateFormat.PKCS8)
    settings = DkimSettings(
        keys=(
            DkimKeySettings(domain=DOMAIN, selector="ok", key_file=str(good)),
            DkimKeySettings(domain=DOMAIN, selector="s2", key_file=str(path)),
        )
    )
    with pytest.raises(DkimKeyError) as caught:
        load_keyring(settings)
    assert str(caught.value).startswith(
        f"[[dkim.keys]] #2 (s2._domainkey.{DOMAIN}) key_file {path}: "
    )
    assert problem in str(caught.value)


def test_a_selector_twice_for_a_domain_is_refused(tmp_path: Path) -> None:
    good = str(_write(tmp_path / "good.key", _RSA, serialization.PrivateFormat.PKCS8))
    entry = DkimKeySettings(domain=DOMAIN, selector="s1", key_file=good)
    with pytest.raises(DkimKeyError, match=r"#2 \(s1._domainkey.example.com\) selector: used"):
        load_keyring(DkimSettings(keys=(entry, entry)))


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"selector": "s 1"}, "[[dkim.keys]] #1 selector: 's 1' is not a selector"),
        ({"domain": "a@b"}, "[[dkim.keys]] #1 domain: 'a@b' is not a domain name"),
        ({"algorithm": "rsa"}, "[[dkim.keys]] #1 algorithm: unknown key"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, str], expected: str) -> None:
    entry = {"domain": DOMAIN, "selector": "s1", "key_file": "/k", **table}
    with pytest.raises(config.ConfigError) as caught:
        config.parse({"dkim": {"keys": [entry]}})
    assert str(caught.value).startswith(expected)


def test_an_rsa_2048_record_is_split_into_strings_a_zone_file_takes(tmp_path: Path) -> None:
    key = _key(tmp_path, "s1")
    name, klass, rtype, *strings = shlex.split(zone_line(key))
    assert (name, klass, rtype) == (f"s1._domainkey.{DOMAIN}.", "IN", "TXT")
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == txt_record(key)


# --- signing ---------------------------------------------------------------------------


def test_both_keys_of_the_from_domain_sign_and_verify(tmp_path: Path) -> None:
    rsa_key, ed_key = _key(tmp_path, "r1"), _key(tmp_path, "e1", "ed25519")
    other = _key(tmp_path, "o1", domain="other.test")
    signed = sign(MESSAGE, Keyring((rsa_key, other, ed_key)))
    assert signed.endswith(MESSAGE)
    assert _verified_selectors(signed, rsa_key, ed_key) == [b"r1", b"e1"]
    unfolded = signed.replace(b"\r\n ", b" ")
    assert b"c=relaxed/relaxed;" in unfolded
    [h, _] = [line.split(b"h=")[1].split(b";")[0] for line in unfolded.split(b"\r\n")[:2]]
    names = [n.strip() for n in h.split(b":")]
    assert names.count(b"from") == 2 and b"received" not in names  # From oversigned


def test_an_added_from_breaks_the_oversigned_signature(tmp_path: Path) -> None:
    key = _key(tmp_path, "r1")
    signed = sign(MESSAGE, Keyring((key,)))
    forged = signed.replace(b"To: ", b"From: evil@attacker.test\r\nTo: ", 1)
    assert not dkim.DKIM(forged).verify(dnsfunc=_dns(key))


@pytest.mark.parametrize(
    "headers",
    [
        b"From: app@other.test\r\n",  # no key for that domain
        b"From: a@example.com, b@other.test\r\n",  # two domains: whose signature?
        b"From: a@example.com\r\nFrom: a@example.com\r\n",  # two From fields
        b"To: bob@dest.test\r\n",  # no From at all
        b"DKIM-Signature: v=1; a=rsa-sha256; d=Example.com; s=app;\r\n"
        b"  h=from; bh=x; b=y\r\nFrom: a@example.com\r\n",  # signed for the domain already
    ],
)
def test_messages_not_to_be_signed_go_out_unchanged(tmp_path: Path, headers: bytes) -> None:
    message = headers + b"Subject: s\r\n\r\nbody\r\n"
    keyring = Keyring((_key(tmp_path, "r1"),))
    assert sign(message, keyring) == message
    assert signatures(message, keyring).problem == ""


def test_a_signature_for_another_domain_does_not_stop_signing(tmp_path: Path) -> None:
    key = _key(tmp_path, "r1")
    message = b"DKIM-Signature: v=1; d=esp.test; s=x; h=from; bh=x; b=y\r\n" + MESSAGE
    assert sign(message, Keyring((key,))).count(b"DKIM-Signature:") == 2


def test_openssl_rsa_signatures_are_dkimpys_byte_for_byte(tmp_path: Path) -> None:
    numbers = dkim.crypto.parse_pem_private_key(_key(tmp_path, "r1").private)
    ours = fastrsa.sign(hashlib.sha256(b"headers"), numbers)
    dkimpy()  # what the first signature does
    assert dkim.RSASSA_PKCS1_v1_5_sign is fastrsa.sign
    original = fastrsa._original
    assert original is not None
    assert ours == original(hashlib.sha256(b"headers"), numbers)


def test_the_signer_signs_a_message_once_for_every_delivery_of_it(tmp_path: Path) -> None:
    first, second = _key(tmp_path, "r1"), _key(tmp_path, "e2", "ed25519")
    signer = Signer(Keyring((first,)))

    async def deliveries() -> list[bytes]:
        out = [await signer.sign(MESSAGE, "QID1") for _ in range(3)]  # retries, destinations
        out.append(await signer.sign(MESSAGE + b"changed\r\n", "QID1"))  # other bytes
        signer.replace(Keyring((second,)))  # SIGHUP with a new selector
        out.append(await signer.sign(MESSAGE, "QID1"))
        return out

    out = asyncio.run(deliveries())
    assert out[0] == out[1] == out[2]  # the same signature (t= and all), computed once
    assert signer.computed == 3
    assert _verified_selectors(out[3], first) == [b"r1"]
    assert _verified_selectors(out[4], second) == [b"e2"]


def test_a_large_message_is_signed_off_the_event_loop_and_verifies(tmp_path: Path) -> None:
    key = _key(tmp_path, "e1", "ed25519")
    large = MESSAGE + b"0123456789 abcdefghij klmnopqrstuvwxyz\r\n" * 10_000  # ~400 KB
    assert len(large) > THREAD_ABOVE
    signer = Signer(Keyring((key,)))
    threads: list[str] = []

    async def signed() -> bytes:
        loop = asyncio.get_running_loop()
        real = loop.run_in_executor

        def spy(*args: Any) -> Any:
            threads.append("executor")
            return real(*args)

        loop.run_in_executor = spy  # type: ignore[method-assign, assignment]
        return await signer.sign(large, "QID2")

    out = asyncio.run(signed())
    assert threads == ["executor"]
    assert _verified_selectors(out, key) == [b"e1"]


def test_a_message_dkimpy_cannot_parse_goes_out_unsigned_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = b"From: a@example.com\r\nBroken header line\r\nSubject: x\r\n\r\nbody\r\n"
    signer = Signer(Keyring((_key(tmp_path, "r1"),)))
    with caplog.at_level(logging.WARNING, logger=maillog.MAIL_LOGGER):
        assert asyncio.run(signer.sign(broken, "QID3")) == broken
    assert [r.getMessage() for r in caplog.records] == [
        "QID3: warning: DKIM: not signed for example.com: Unexpected characters in RFC822 "
        "header: b'Broken header line'"
    ]


def test_without_keys_the_signer_returns_the_message_as_it_is() -> None:
    assert asyncio.run(Signer().sign(MESSAGE, "QID1")) is MESSAGE


# --- smtprelay dkim keygen -------------------------------------------------------------


def _keygen(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        cli.main(["dkim", "keygen", *args])
    out, err = capsys.readouterr()
    return int(str(done.value.code)), out, err


def test_keygen_needs_no_configuration_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTPRELAY_CONFIG", str(tmp_path / "missing.toml"))
    code, out, err = _keygen(
        capsys, "Mail.Example.com", "ed1", "--type", "ed25519", "--dir", str(tmp_path)
    )
    assert code == 0, err
    path = tmp_path / "mail.example.com.ed1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key(DkimKeySettings(domain="mail.example.com", selector="ed1", key_file=str(path)))
    assert out == f'ed1._domainkey.mail.example.com. IN TXT "{txt_record(key)}"\n'
    assert 'key_file = "' in err  # the configuration snippet, on stderr
    # A second run never overwrites a key that may be published already.
    code, out, err = _keygen(capsys, "mail.example.com", "ed1", "--dir", str(tmp_path))
    assert (code, out) == (1, "")
    assert err == f"smtprelay: {path}: exists already; choose a new selector\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exa mple.com", "s1"], "DOMAIN: 'exa mple.com' is not a domain name"),
        (["example.com", "s_1"], "SELECTOR: 's_1' is not a selector"),
    ],
)
def test_keygen_refuses_names_the_configuration_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _keygen(capsys, *args, "--dir", str(tmp_path))
    assert code == 1 and out == "" and err.startswith(f"smtprelay: {message}")
    assert list(tmp_path.iterdir()) == []
