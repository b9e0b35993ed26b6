"""The legacy-client profile (issue 14, item 5): old printers and scanners.

``[server] legacy_tls_listen`` is a STARTTLS listener where TLS 1.0 and 1.1 are accepted
(``openssl s_client -tls1`` / ``-tls1_1`` succeed there and fail on the other listeners),
with a warning at start and ``smtprelay_smtpd_legacy_tls_sessions_total{version}`` in
/metrics; ``[auth] plaintext_networks`` lets clients from those networks AUTH without
TLS while everyone else gets what they always got (538 5.7.11). The relay runs with its
default inbound worker process, so the counter crosses the worker boundary.
"""

from __future__ import annotations

import base64
import smtplib
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.http_support import api_of, metric_samples
from tests.polling import wait_until

USER, PASSWORD = "printer", "scan-to-mail-1"
LEGACY_METRIC = "smtprelay_smtpd_legacy_tls_sessions_total"


def s_client(port: int, *options: str) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` as an old device's TLS stack: the handshake, then EOF.
    ``@SECLEVEL=0``: OpenSSL 3's own client would not offer TLS 1.0/1.1 suites either."""
    where = f"{LOOPBACK}:{port}"
    return subprocess.run(
        ["openssl", "s_client", "-connect", where, "-cipher", "DEFAULT:@SECLEVEL=0", *options],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


def negotiated(run: subprocess.CompletedProcess[str]) -> str | None:
    """The protocol version of a completed handshake, None if there was none (``New,
    (NONE), Cipher is (NONE)``; then ``Protocol :`` is only the version tried). The
    session's ``Protocol :`` line names it (``New, TLSv1.0, ...`` names the suite's
    version); under TLS 1.3 only the ``New, TLSv1.3, ...`` line is there."""
    if "New, (NONE), Cipher is (NONE)" in run.stdout:
        return None
    new = None
    for line in run.stdout.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Protocol":
            return value.strip()
        if line.startswith("New, ") and ", Cipher is " in line:
            new = line.split(", ")[1]
    return new


def legacy_counts(relay: Daemon) -> dict[str, float]:
    token_status, text = api_of(relay).get("/metrics")
    assert token_status == 200, text
    return {
        dict(labels)["version"]: value
        for (name, labels), value in metric_samples(text).items()
        if name == LEGACY_METRIC
    }


@pytest.fixture
def relay(make_daemon: Callable[..., Daemon], tmp_path: Any) -> Daemon:
    tokens = tmp_path / "tokens"
    tokens.write_text("test-token-5f1c9a0e7d\n")
    legacy_port = free_port()
    daemon = make_daemon(
        overrides={
            "server": {"legacy_tls_listen": [f"{LOOPBACK}:{legacy_port}"]},
            "http": {"tokens_file": str(tokens)},
        },
        users={USER: PASSWORD},
    )
    daemon.legacy_port = legacy_port  # type: ignore[attr-defined]
    return daemon


@pytest.mark.parametrize(("flag", "version"), [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")])
def test_old_tls_only_on_the_legacy_listener_and_counted(
    relay: Daemon, flag: str, version: str
) -> None:
    legacy_port: int = relay.legacy_port  # type: ignore[attr-defined]
    assert "[server] legacy_tls_listen: TLS 1.0 and 1.1 (deprecated by RFC 8996)" in relay.log()
    # The normal listeners refuse it, STARTTLS and implicit TLS alike.
    for port, starttls in ((relay.port, True), (relay.tls_port, False)):
        assert port is not None
        refused = s_client(port, flag, *(["-starttls", "smtp"] if starttls else []))
        assert refused.returncode != 0 and negotiated(refused) is None, refused.stdout
    assert legacy_counts(relay) == {}
    # The legacy listener accepts it...
    accepted = s_client(legacy_port, flag, "-starttls", "smtp")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert negotiated(accepted) == version
    # ...and TLS 1.2 and 1.3 as well, which are not counted.
    modern = s_client(legacy_port, "-starttls", "smtp")
    assert modern.returncode == 0 and negotiated(modern) in ("TLSv1.2", "TLSv1.3")
    wait_until(
        lambda: legacy_counts(relay) == {version: 1.0}, 10, lambda: str(legacy_counts(relay))
    )
    assert f"warning: legacy TLS (STARTTLS) from unknown[127.0.0.1]: {version}" in relay.log()
    # /status says which listener it is.
    listeners = api_of(relay).ok("GET", "/status")["listeners"]
    [legacy] = [entry for entry in listeners if entry["address"].endswith(f":{legacy_port}")]
    assert legacy["tls"] == "starttls" and legacy["legacy_tls"] is True


def _plain_auth(source: str, port: int) -> tuple[bool, int, bytes]:
    """From ``source``, without TLS: (AUTH offered in EHLO, AUTH PLAIN reply code, text)."""
    with smtplib.SMTP(LOOPBACK, port, source_address=(source, 0), timeout=30) as client:
        client.ehlo("printer.test")
        offered = client.has_extn("auth")
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {token}")
        return offered, code, text


def test_plaintext_auth_only_from_the_configured_networks(
    make_daemon: Callable[..., Daemon],
) -> None:
    relay = make_daemon(
        overrides={"auth": {"plaintext_networks": ["127.0.0.2/32"]}}, users={USER: PASSWORD}
    )
    assert "[auth] plaintext_networks: AUTH without TLS is allowed from 127.0.0.2/32" in (
        relay.log()
    )
    assert _plain_auth("127.0.0.2", relay.port) == (True, 235, b"2.7.0 Authentication successful")
    # Anyone else: what the relay answers to AUTH without TLS anyway.
    offered, code, text = _plain_auth("127.0.0.3", relay.port)
    assert (offered, code) == (False, 538)
    assert text.startswith(b"5.7.11 Encryption required"), text
    # The networks follow a reload (SIGHUP), in the inbound worker too.
    relay.reconfigure({"auth": {"plaintext_networks": ["127.0.0.3/32"]}})
    assert "configuration reloaded" in relay.hup()
    wait_until(lambda: _plain_auth("127.0.0.3", relay.port)[1] == 235, 10, "the worker's reload")
    assert _plain_auth("127.0.0.2", relay.port)[:2] == (False, 538)
