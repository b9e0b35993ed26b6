"""DKIM signing of outgoing mail (issue 14, item 4), checked by two verifiers.

The real daemon delivers to an aiosmtpd sink on 127.0.0.2; what the sink received is
verified with dkimpy's verifier (its DNS look-up answered from the keys' records) and
with OpenDKIM's ``opendkim-testmsg`` (opendkim_tool.py), which looks the records up in the
test DNS server. The keys come from ``smtprelay dkim keygen``, whose printed record is
what the zone serves: RSA-2048 (a TXT record of two strings) and Ed25519 (RFC 8463).
"""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from smtprelay.config import DkimKeySettings
from smtprelay.dkimsign import Keyring, sign
from smtprelay.dkimsign.keys import read_key
from tests.integration import opendkim_tool
from tests.integration.daemon import Daemon, free_port
from tests.integration.delivery_support import submit, wait_status
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

SINK_HOST = "127.0.0.2"
RCPT = "bob@dest.test"
DOMAIN = "sender.test"
LIMIT = 998
LONG_BODY_LINE = b"<p>" + b"x" * 2_997  # no white space: cut Postfix's way
LONG_SUBJECT = b"Subject: " + b" ".join(b"word%03d" % i for i in range(300))  # signed, folded


def message(tag: str, sender: str = f"app@{DOMAIN}", body: bytes = b"Hello.") -> bytes:
    return (
        (
            f"From: App <{sender}>\r\n"
            f"To: <{RCPT}>\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            f"Message-ID: <{tag}@{DOMAIN}>\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/html; charset=us-ascii\r\n"
        ).encode()
        + LONG_SUBJECT
        + b"\r\n\r\n"
        + body
        + b"\r\n.dot line\r\nend\r\n"
    )


def keygen(directory: Path, selector: str, kind: str) -> tuple[Path, str, list[str]]:
    """``smtprelay dkim keygen`` as an operator runs it: (key file, name, TXT strings)."""
    options = ["--type", kind, "--dir", str(directory)]
    run = subprocess.run(
        [sys.executable, "-m", "smtprelay", "dkim", "keygen", DOMAIN, selector, *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [line] = run.stdout.splitlines()
    name, klass, rtype, *strings = shlex.split(line)  # the zone-file line, quotes and all
    assert (name, klass, rtype) == (f"{selector}._domainkey.{DOMAIN}.", "IN", "TXT")
    assert all(len(s) <= 255 for s in strings)
    path = directory / f"{DOMAIN}.{selector}.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path, name, strings


class Keys:
    """Keys made by keygen; their records in the test DNS zone and for dkimpy."""

    def __init__(self, directory: Path, zone: TestDNSServer | None) -> None:
        self.directory = directory
        self.zone = zone
        self.records: dict[bytes, bytes] = {}

    def make(self, selector: str, kind: str) -> Path:
        path, name, strings = keygen(self.directory, selector, kind)
        self.records[name.encode()] = "".join(strings).encode()
        if self.zone is not None:
            self.zone.zone.txt(name, *strings)
        return path

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self.records.get(name)

    def verify_each(self, content: bytes) -> list[bytes]:
        """The selector of each signature in ``content``; every one must verify (dkimpy)."""
        parsed = dkim.DKIM(content)
        count = content.count(b"\r\nDKIM-Signature:") + content.startswith(b"DKIM-Signature:")
        selectors = []
        for index in range(count):
            assert parsed.verify(idx=index, dnsfunc=self.dnsfunc), (index, content[:1500])
            selectors.append(parsed.selector)
        return selectors


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(SINK_HOST, free_port()) as s:
        yield s


@pytest.fixture
def opendkim_dns() -> Iterator[TestDNSServer | None]:
    """The test DNS server on port 53 of its own loopback address, for OpenDKIM; None
    (and OpenDKIM's checks skipped) where that cannot be."""
    if opendkim_tool.unavailable() is not None:
        yield None
        return
    with TestDNSServer(opendkim_tool.DNS_ADDRESS, opendkim_tool.DNS_PORT) as server:
        yield server


@pytest.fixture
def keys(tmp_path: Path, opendkim_dns: TestDNSServer | None) -> Keys:
    directory = tmp_path / "dkim"
    directory.mkdir()
    return Keys(directory, opendkim_dns)


def relay_to(make_daemon: Callable[..., Daemon], sink: Sink, key_files: dict[str, Path]) -> Daemon:
    overrides: dict[str, dict[str, Any]] = {
        "delivery": {"mode": "smarthost", "retry_schedule": ["1s"], "line_length_limit": LIMIT},
        "delivery.smarthost": {"hosts": [f"{SINK_HOST}:{sink.port}"], "tls": "none"},
        "bounce": {"enabled": False},
    }
    for number, (selector, path) in enumerate(key_files.items(), 1):
        overrides[f"[dkim.keys]#{number}"] = {
            "domain": DOMAIN,
            "selector": selector,
            "key_file": str(path),
        }
    return make_daemon(overrides=overrides)


def only_signature(content: bytes, selector: bytes) -> bytes:
    """``content`` without the DKIM-Signature fields of other selectors (OpenDKIM reports
    one result for the message; this checks each signature on its own)."""
    fields = re.split(rb"\r\n(?=[^ \t])", content.split(b"\r\n\r\n", 1)[0])
    body = content.split(b"\r\n\r\n", 1)[1]
    kept = [
        f
        for f in fields
        if not f.lower().startswith(b"dkim-signature:")
        or re.search(rb";\s*s=" + re.escape(selector) + rb";", re.sub(rb"\s+", b" ", f))
    ]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def assert_opendkim_verifies(content: bytes, selectors: list[bytes], workdir: Path) -> None:
    if opendkim_tool.unavailable() is not None:
        return  # the fixture has no DNS server for it; dkimpy's check stands alone
    for selector in selectors:
        ok, output = opendkim_tool.verify(only_signature(content, selector), workdir)
        assert ok, (selector, output)
    # And a changed body fails there: the check can fail.
    tampered = only_signature(content, selectors[0]).replace(b"end\r\n", b"End\r\n")
    ok, output = opendkim_tool.verify(tampered, workdir)
    assert not ok and "signature" in output.lower(), output


def added(relay: Daemon, qid: str) -> list[str]:
    return re.findall(
        rf"{qid}: DKIM-Signature field added \(s=(\w+), d={re.escape(DOMAIN)}\)", relay.log()
    )


def test_rsa_and_ed25519_signatures_verify_after_folding_and_a_retry(
    make_daemon: Callable[..., Daemon], sink: Sink, keys: Keys, tmp_path: Path
) -> None:
    relay = relay_to(
        make_daemon,
        sink,
        {"rsa2026": keys.make("rsa2026", "rsa"), "ed2026": keys.make("ed2026", "ed25519")},
    )
    sink.on_data("451 4.3.0 try again later", times=1)  # the first attempt is deferred
    qid = submit(relay, [RCPT], message("long", body=LONG_BODY_LINE))
    wait_status(relay, qid, RCPT, "sent")
    [received] = sink.messages
    content = received.content
    assert max(len(line) for line in content.split(b"\r\n")) <= LIMIT  # folded on output
    assert b"warning: folded" in relay.log().encode()
    assert keys.verify_each(content) == [b"rsa2026", b"ed2026"]
    assert re.search(rb"a=rsa-sha256;", content) and re.search(rb"a=ed25519-sha256;", content)
    assert b"c=relaxed/relaxed;" in content
    # From oversigned (listed once more than present), Received: not signed.
    h = re.search(rb"h=([^;]+);", re.sub(rb"\s+", b"", content)).group(1)  # type: ignore[union-attr]
    assert h.split(b":").count(b"from") == 2 and b"received" not in h
    # Signed once for both attempts: one line per key, and the sink got those signatures.
    assert added(relay, qid) == ["rsa2026", "ed2026"]
    assert_opendkim_verifies(content, [b"rsa2026", b"ed2026"], tmp_path)


def test_other_domains_and_messages_signed_already_are_left_alone(
    make_daemon: Callable[..., Daemon], sink: Sink, keys: Keys, tmp_path: Path
) -> None:
    relay = relay_to(make_daemon, sink, {"ed2026": keys.make("ed2026", "ed25519")})
    # The application signed it itself, with a key of its own for the same domain.
    app_key = read_key(
        DkimKeySettings(domain=DOMAIN, selector="app", key_file=str(keys.make("app", "rsa")))
    )
    presigned = sign(message("presigned"), Keyring((app_key,)))
    qid_signed = submit(relay, [RCPT], presigned)
    qid_other = submit(relay, [RCPT], message("other", sender="app@other.test"))
    qid_ours = submit(relay, [RCPT], message("ours"))
    for qid in (qid_signed, qid_other, qid_ours):
        wait_status(relay, qid, RCPT, "sent")
    by_id = {m.content.split(b"Message-ID: <")[1].split(b"@")[0]: m.content for m in sink.messages}
    assert keys.verify_each(by_id[b"presigned"]) == [b"app"]  # not signed a second time
    assert b"DKIM-Signature" not in by_id[b"other"]
    assert keys.verify_each(by_id[b"ours"]) == [b"ed2026"]
    assert added(relay, qid_signed) == added(relay, qid_other) == []
    assert_opendkim_verifies(by_id[b"presigned"], [b"app"], tmp_path)


def test_sighup_rotates_the_selector_and_refuses_a_bad_key(
    make_daemon: Callable[..., Daemon], sink: Sink, keys: Keys
) -> None:
    relay = relay_to(make_daemon, sink, {"old": keys.make("old", "rsa")})
    qid = submit(relay, [RCPT], message("before"))
    wait_status(relay, qid, RCPT, "sent")
    # Rotation: a new key under a new selector, in place of the old one; no restart.
    relay.reconfigure(
        {"[dkim.keys]#1": {"selector": "new", "key_file": str(keys.make("new", "ed25519"))}}
    )
    assert "configuration reloaded" in relay.hup()
    qid = submit(relay, [RCPT], message("after"))
    wait_status(relay, qid, RCPT, "sent")
    # A key file that is no key: the reload is refused, naming the key; "new" stays.
    broken = keys.directory / "broken.key"
    broken.write_text("not a key\n")
    relay.reconfigure({"[dkim.keys]#1": {"selector": "next", "key_file": str(broken)}})
    line = relay.hup()
    assert "reload refused" in line, line
    assert f"[[dkim.keys]] #1 (next._domainkey.{DOMAIN}) key_file {broken}: not a PEM" in line
    qid = submit(relay, [RCPT], message("refused"))
    wait_status(relay, qid, RCPT, "sent")
    wait_until(lambda: len(sink.messages) == 3, 10, "three messages at the sink")
    signed_with = {
        m.content.split(b"Message-ID: <")[1].split(b"@")[0]: keys.verify_each(m.content)
        for m in sink.messages
    }
    assert signed_with == {b"before": [b"old"], b"after": [b"new"], b"refused": [b"new"]}


def test_a_bad_key_stops_the_start_and_check_config_names_it(
    make_daemon: Callable[..., Daemon], sink: Sink, tmp_path: Path
) -> None:
    small = tmp_path / "small.key"
    out = ["-out", str(small)]
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512", *out],
        check=True,
        capture_output=True,
        timeout=60,
    )
    relay = make_daemon(
        start=False,
        overrides={"[dkim.keys]#1": {"domain": DOMAIN, "selector": "weak", "key_file": str(small)}},
    )
    expected = f"[[dkim.keys]] #1 (weak._domainkey.{DOMAIN}) key_file {small}: an RSA key of 512"
    check = relay.cli("check-config", check=False)
    assert check.returncode == 2 and expected in check.stderr, check.stderr
    assert "Traceback" not in check.stderr
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        relay.start()
