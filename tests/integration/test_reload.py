"""SIGHUP: a changed configuration takes effect without a restart; a broken one is refused."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import trustme

from smtprelay import replies
from tests.integration.daemon import LOOPBACK, Daemon

UNTRUSTED = {"relay": {"trusted_networks": ["10.0.0.0/8"]}}


def rcpt_code(daemon: Daemon, client: smtplib.SMTP | None = None) -> int:
    def attempt(c: smtplib.SMTP) -> int:
        c.rset()
        c.mail("app@example.com")
        return c.rcpt("bob@example.net")[0]

    if client is not None:
        return attempt(client)
    with smtplib.SMTP(LOOPBACK, daemon.port) as fresh:
        fresh.ehlo("client.test")
        return attempt(fresh)


def test_hup_applies_a_new_relay_policy_without_dropping_sessions(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(overrides=UNTRUSTED)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    with smtplib.SMTP(LOOPBACK, daemon.port) as open_session:
        open_session.ehlo("client.test")
        assert rcpt_code(daemon, open_session) == replies.RELAY_DENIED.code

        daemon.reconfigure({"relay": {"trusted_networks": ["127.0.0.0/8"]}})
        assert "configuration reloaded" in daemon.hup()

        # The session opened before the reload is still there and now may relay too.
        assert rcpt_code(daemon, open_session) == 250
    assert rcpt_code(daemon) == 250
    assert daemon.proc.pid == pid and daemon.proc.poll() is None


def test_hup_with_a_broken_config_keeps_the_running_one(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(overrides=UNTRUSTED)
    daemon.reconfigure({"server": {"bogus": 1}, "relay": {"trusted_networks": ["127.0.0.1/32"]}})
    line = daemon.hup()
    assert "reload refused" in line and "bogus" in line
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert rcpt_code(daemon) == replies.RELAY_DENIED.code  # still the old policy

    del daemon.sections["server"]["bogus"]
    daemon.reconfigure({"tls": {"cert_file": "/nonexistent/cert.pem"}})
    assert "reload refused" in daemon.hup()
    with smtplib.SMTP(LOOPBACK, daemon.port) as client:  # TLS still works as before
        client.starttls(context=ssl.create_default_context(cafile=str(daemon.ca_file)))
        assert client.noop()[0] == 250


def test_hup_loads_a_renewed_certificate(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    renewed_ca = trustme.CA()
    cert = renewed_ca.issue_cert("localhost", LOOPBACK)
    cert_file, key_file = tmp_path / "new-cert.pem", tmp_path / "new-key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    daemon.reconfigure({"tls": {"cert_file": str(cert_file), "key_file": str(key_file)}})
    assert "configuration reloaded" in daemon.hup()

    old_trust = ssl.create_default_context(cafile=str(daemon.ca_file))
    new_trust = ssl.create_default_context()
    renewed_ca.configure_trust(new_trust)
    with smtplib.SMTP(LOOPBACK, daemon.port) as client:
        client.starttls(context=new_trust)  # the renewed certificate is served
        assert client.noop()[0] == 250
    with smtplib.SMTP(LOOPBACK, daemon.port) as client:
        try:
            client.starttls(context=old_trust)
        except ssl.SSLCertVerificationError:
            pass
        else:
            raise AssertionError("the old certificate is still served after the reload")


def test_changed_users_file_takes_effect_on_the_next_auth(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(users={"app1": "first-pw"})

    def login(user: str, password: str) -> int:
        with smtplib.SMTP(LOOPBACK, daemon.port) as client:
            client.starttls(context=ssl.create_default_context(cafile=str(daemon.ca_file)))
            try:
                return client.login(user, password)[0]
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code

    assert login("app1", "first-pw") == 235
    daemon.cli("user", "add", "app1", input="second-pw\n")  # password change
    daemon.cli("user", "add", "app2", input="other-pw\n")  # a new user
    assert "configuration reloaded" in daemon.hup()
    assert login("app1", "second-pw") == 235
    assert login("app2", "other-pw") == 235
    assert login("app1", "first-pw") == replies.AUTH_FAILED.code
