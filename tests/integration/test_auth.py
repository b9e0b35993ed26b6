"""AUTH and relay permission: TLS before credentials, failures, untrusted networks."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable, Iterator

import pytest
import trustme

from smtprelay import replies
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.test_inbound import (
    HELO,
    PASSWORD,
    RECIPIENT,
    SENDER,
    USER,
    RawClient,
    assert_log,
    assert_reply,
    authenticated,
    client_context,
    line,
    log_mark,
    smtp,
    split_received,
    start_relay,
    submit,
)

PLAIN_BLOB = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()


UNTRUSTED = {"relay": {"trusted_networks": ["10.0.0.0/8"]}}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    """Default settings, loopback trusted. No failed AUTH here: failures slow AUTH down."""
    daemon = start_relay(tmp_path_factory, ca)
    yield daemon
    daemon.kill()


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    """127.0.0.1 is not in trusted_networks: only authenticated clients may relay."""
    daemon = start_relay(tmp_path_factory, ca, overrides=UNTRUSTED)
    yield daemon
    daemon.kill()


def capabilities(ehlo: list[str]) -> list[str]:
    return [item[4:] for item in ehlo[1:]]


def test_auth_offered_only_after_starttls(relay: Daemon) -> None:
    mark = log_mark(relay)
    with RawClient(relay.port) as raw:
        before = capabilities(raw.ehlo())
        assert "STARTTLS" in before
        assert not any(c.startswith("AUTH") for c in before), before
        assert_reply(raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}"), replies.AUTH_NEEDS_TLS)
        assert_reply(raw.cmd("AUTH LOGIN"), replies.AUTH_NEEDS_TLS)
        assert raw.starttls(client_context(relay)).startswith("220 ")
        after = capabilities(raw.ehlo())
        assert "AUTH PLAIN LOGIN" in after, after
        assert "STARTTLS" not in after
        assert_reply(raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}"), replies.AUTH_OK)
    # The credentials sent in clear were never even checked.
    assert "authentication failed" not in relay.log()[mark:]


def test_smtplib_refuses_to_login_in_clear(relay: Daemon) -> None:
    with smtp(relay) as client:
        assert not client.has_extn("auth")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login(USER, PASSWORD)


def test_allow_plaintext_offers_auth_before_tls(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon(users={USER: PASSWORD}, overrides={"auth": {"allow_plaintext": True}})
    with smtp(relay) as client:
        assert client.has_extn("starttls")
        assert "PLAIN" in client.esmtp_features["auth"].split()
        code, text = client.login(USER, PASSWORD)
        assert_reply(line(code, text), replies.AUTH_OK)
        qid = submit(client, b"Subject: plaintext auth\r\n\r\nbody\r\n")
    envelope = relay.envelope(qid)
    assert envelope["client"]["auth_user"] == USER
    assert envelope["client"]["tls"] is None
    assert b" with ESMTPA id " in split_received(relay.message(qid))[0]


def test_no_users_means_no_auth(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon()  # users file absent
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert raw.starttls(client_context(relay)).startswith("220 ")
        assert not any(c.startswith("AUTH") for c in capabilities(raw.ehlo()))
        assert_reply(raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}"), replies.AUTH_UNAVAILABLE)


def test_wrong_password(make_daemon: Callable[..., Daemon]) -> None:
    # Failed attempts are slowed down per client (0.5 s more each): two failures only.
    relay = make_daemon(users={USER: PASSWORD})
    wrong = "Tr0ub4dor-wrong-pw"
    with smtp(relay) as client:
        client.starttls(context=client_context(relay))
        client.ehlo()
        client.user, client.password = USER, wrong
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.auth("PLAIN", client.auth_plain)
        assert_reply(line(failed.value.smtp_code, failed.value.smtp_error), replies.AUTH_FAILED)
        # unknown user, LOGIN mechanism with its two-step exchange
        client.user = "nobody"
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert_reply(line(failed.value.smtp_code, failed.value.smtp_error), replies.AUTH_FAILED)
        # not authenticated: nothing was granted
        code, text = client.rcpt(RECIPIENT)
        assert_reply(line(code, text), replies.NEED_MAIL)
        # and the right password still works afterwards
        client.user, client.password = USER, PASSWORD
        code, text = client.auth("PLAIN", client.auth_plain)
        assert_reply(line(code, text), replies.AUTH_OK)
    assert_log(relay, r"warning: unknown\[127\.0\.0\.1\]: SASL PLAIN authentication failed")
    assert_log(relay, r"warning: unknown\[127\.0\.0\.1\]: SASL LOGIN authentication failed")
    log = relay.log()
    plain_blob = base64.b64encode(f"\0{USER}\0{wrong}".encode()).decode()
    for secret in (wrong, PASSWORD, base64.b64encode(wrong.encode()).decode(), plain_blob,
                   PLAIN_BLOB):
        assert secret not in log


def test_malformed_auth_exchanges(relay: Daemon) -> None:
    # None of these reaches the password check, so none counts as a failed attempt.
    with RawClient(relay.port) as raw:
        raw.ehlo()
        raw.starttls(client_context(relay))
        raw.ehlo()
        assert raw.cmd("AUTH PLAIN !!notbase64!!").startswith("501 5.5.2 ")
        assert raw.cmd("AUTH CRAM-MD5").startswith("504 5.5.4 ")
        assert raw.cmd("AUTH LOGIN").startswith("334 ")
        assert raw.cmd("*").startswith("501 ")  # client cancels the exchange
        assert_reply(raw.cmd("NOOP"), replies.OK)
        assert_reply(raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}"), replies.AUTH_OK)
        assert raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}").startswith("503 5.5.1 ")


def test_relay_denied_from_untrusted_network(untrusted: Daemon) -> None:
    relay = untrusted
    before = relay.queued_ids()
    mark = log_mark(relay)
    with RawClient(relay.port) as raw:
        raw.ehlo("pc")
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        reply = raw.cmd("RCPT TO:<x@example.org>")
        assert reply == f"{replies.RELAY_DENIED.code} {replies.RELAY_DENIED.enhanced} " \
                        f"<x@example.org>: {replies.RELAY_DENIED.text}"
        assert_reply(raw.cmd("DATA"), replies.NEED_RCPT)
        # TLS alone grants nothing
        raw.starttls(client_context(relay))
        raw.ehlo("pc")
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd("RCPT TO:<x@example.org>"), replies.RELAY_DENIED)
    assert_log(
        relay,
        r"smtprelay/smtpd\[\d+\]: NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.1\]: "
        r"554 5\.7\.1 <x@example\.org>: Relay access denied; "
        r"from=<app@example\.com> to=<x@example\.org> proto=ESMTP helo=<pc>$",
        start=mark,
    )
    assert relay.queued_ids() == before


def test_relay_allowed_after_auth_from_untrusted_network(untrusted: Daemon) -> None:
    relay = untrusted
    with authenticated(relay) as client:
        qid = submit(client, b"Subject: authenticated relay\r\n\r\nbody\r\n",
                     recipients=("x@example.org", RECIPIENT))
    envelope = relay.envelope(qid)
    assert envelope["client"]["auth_user"] == USER
    assert [r["address"] for r in envelope["recipients"]] == ["x@example.org", RECIPIENT]
    # AUTH is forgotten with the connection: a new plain session is refused again.
    with smtp(relay) as client:
        client.mail(SENDER)
        code, text = client.rcpt(RECIPIENT)
        assert_reply(line(code, text), replies.RELAY_DENIED)


def test_implicit_tls_auth_relays_from_untrusted_network(untrusted: Daemon) -> None:
    relay = untrusted
    assert relay.tls_port
    with smtplib.SMTP_SSL(LOOPBACK, relay.tls_port, local_hostname=HELO,
                          context=client_context(relay), timeout=15) as client:
        client.ehlo()
        client.mail(SENDER)
        code, text = client.rcpt(RECIPIENT)
        assert_reply(line(code, text), replies.RELAY_DENIED)
        client.rset()
        client.login(USER, PASSWORD)
        qid = submit(client, b"Subject: implicit\r\n\r\nbody\r\n")
    assert qid in relay.queued_ids()
