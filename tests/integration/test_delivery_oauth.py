"""A smarthost with ``auth = "xoauth2"``: the relay gets access tokens from a real token
endpoint on loopback and authenticates to an SMTP upstream that checks them (XOAUTH2, or
OAUTHBEARER where only that is offered). One token serves many messages; a token
endpoint that is down, or refuses a revoked refresh token or an old client secret,
defers the mail (4.7.0, never a bounce) with a log line naming the route and the OAuth
error, and the mail goes out once the endpoint answers again (or after a SIGHUP with the
new secret)."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.integration.daemon import Daemon
from tests.integration.delivery_support import (
    MX1,
    assert_delivered_intact,
    deliveries,
    make_message,
    submit,
    wait_removed,
    wait_status,
)
from tests.integration.oauth_server import OAuthSink, TokenServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

MAILBOX = "relay@company.test"


@pytest.fixture
def server() -> Iterator[TokenServer]:
    server = TokenServer(app_mailboxes={MAILBOX}).start()
    yield server
    server.stop()


@pytest.fixture
def make_oauth_sink(
    sink_port: int, sink_cert: trustme.LeafCert, server: TokenServer
) -> Iterator[Callable[..., OAuthSink]]:
    sinks: list[Sink] = []

    def make(**kwargs: Any) -> OAuthSink:
        # A short idle timeout: the upstream closes each connection soon after its
        # message, so that every message authenticates on a connection of its own.
        sink = OAuthSink(MX1, sink_port, server, tls_cert=sink_cert, idle_timeout=0.3, **kwargs)
        sinks.append(sink.start())
        return sink

    yield make
    for sink in sinks:
        sink.stop()


def _relay(
    delivering_relay: Callable[..., Daemon],
    server: TokenServer,
    sink_port: int,
    tmp_path: Path,
    **oauth2: Any,
) -> Daemon:
    secret = tmp_path / "client-secret"
    secret.write_text(server.client_secret + "\n")
    keys = {
        "token_url": server.url,
        "client_id": server.client_id,
        "client_secret_file": str(secret),
        "scope": "https://outlook.office365.com/.default",
        **oauth2,
    }
    return delivering_relay(
        delivery={"mode": "smarthost"},
        **{
            "delivery.smarthost": {
                "hosts": [f"{MX1}:{sink_port}"],
                "tls": "starttls",
                "auth": "xoauth2",
                "username": MAILBOX,
            },
            "delivery.smarthost.oauth2": keys,
        },
    )


def _deliver_one(relay: Daemon, sink: Sink, tag: str) -> str:
    """Submit, wait until delivered and until the upstream has closed the connection."""
    qid = submit(relay, ["x@anywhere.test"], make_message(tag))
    wait_removed(relay, qid)
    wait_until(lambda: sink.open_now == 0, 10, "the upstream closed the connection")
    return qid


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_client_credentials_one_token_for_many_messages(
    mechanism: str,
    server: TokenServer,
    make_oauth_sink: Callable[..., OAuthSink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
    tmp_path: Path,
) -> None:
    sink = make_oauth_sink(mechanisms=(mechanism,))
    relay = _relay(delivering_relay, server, sink_port, tmp_path)
    messages = 4
    qids = [_deliver_one(relay, sink, f"cc-{n}") for n in range(messages)]
    for qid in qids:
        lines = deliveries(relay, qid)
        assert [d.status for d in lines] == ["sent"], lines
    assert [a for a in sink.auth_attempts] == [(mechanism, MAILBOX, True)] * messages
    assert sink.connections == messages  # each message authenticated anew...
    assert server.count("client_credentials") == 1  # ...with the one cached token
    assert {m.auth_user for m in sink.messages} == {MAILBOX}


def test_refresh_token_flow(
    server: TokenServer,
    make_oauth_sink: Callable[..., OAuthSink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
    tmp_path: Path,
) -> None:
    server.app_mailboxes.clear()  # only a token issued for the mailbox itself will do
    refresh = tmp_path / "refresh-token"
    refresh.write_text(server.issue_refresh_token(MAILBOX) + "\n")
    sink = make_oauth_sink()
    relay = _relay(
        delivering_relay,
        server,
        sink_port,
        tmp_path,
        grant="refresh_token",
        client_secret_file="",
        refresh_token_file=str(refresh),
    )
    data = make_message("refresh")
    qid = submit(relay, ["x@anywhere.test"], data)
    wait_removed(relay, qid)
    assert_delivered_intact(sink, qid, data, ["x@anywhere.test"])
    assert server.count("refresh_token") == 1
    assert sink.auth_attempts == [("XOAUTH2", MAILBOX, True)]


def test_token_endpoint_down_defers_then_delivers(
    server: TokenServer,
    make_oauth_sink: Callable[..., OAuthSink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
    tmp_path: Path,
) -> None:
    sink = make_oauth_sink()
    relay = _relay(delivering_relay, server, sink_port, tmp_path)
    server.down()
    qid = submit(relay, ["x@anywhere.test"], make_message("down"))
    [deferred] = wait_status(relay, qid, "x@anywhere.test", "deferred")[:1]
    assert deferred.dsn == "4.7.0", deferred
    assert "OAuth2 token request failed (smarthost: ConnectError" in deferred.reply
    assert "oauth2: smarthost: token request to " + server.url in relay.log()
    assert sink.messages == []
    server.up()
    wait_removed(relay, qid)
    assert deliveries(relay, qid)[-1].status == "sent"
    assert "bounced" not in {d.status for d in deliveries(relay, qid)}


def test_revoked_refresh_token_defers_with_the_oauth_error(
    server: TokenServer,
    make_oauth_sink: Callable[..., OAuthSink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
    tmp_path: Path,
) -> None:
    token = server.issue_refresh_token(MAILBOX)
    server.revoke(token)
    refresh = tmp_path / "refresh-token"
    refresh.write_text(token + "\n")
    sink = make_oauth_sink()
    relay = _relay(
        delivering_relay,
        server,
        sink_port,
        tmp_path,
        grant="refresh_token",
        refresh_token_file=str(refresh),
    )
    qid = submit(relay, ["x@anywhere.test"], make_message("revoked"))
    [deferred] = wait_status(relay, qid, "x@anywhere.test", "deferred")[:1]
    assert deferred.dsn == "4.7.0"
    assert "smarthost: invalid_grant: AADSTS70000: refresh token revoked" in deferred.reply
    assert "token request to" in relay.log() and "invalid_grant" in relay.log()
    assert sink.messages == []
    envelope = relay.envelope(qid)
    assert envelope["recipients"][0]["state"] == "pending"  # never bounced


def test_sighup_reads_the_new_client_secret(
    server: TokenServer,
    make_oauth_sink: Callable[..., OAuthSink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
    tmp_path: Path,
) -> None:
    sink = make_oauth_sink()
    relay = _relay(delivering_relay, server, sink_port, tmp_path)
    _deliver_one(relay, sink, "before")
    # The secret is rotated at the provider, and the tokens issued with the old one end:
    # the cached token is refused (535), and a new one cannot be had with the old secret
    # (asked for at once, on the same connection).
    server.client_secret = "second client secret"
    server.revoke_issued()
    wait_until(lambda: time.time() >= server.not_before, 5, "tokens issued from now on valid")
    qid = submit(relay, ["x@anywhere.test"], make_message("after"))
    [deferred] = wait_status(relay, qid, "x@anywhere.test", "deferred")[:1]
    assert "smarthost: invalid_client: AADSTS7000215" in deferred.reply, deferred
    assert sink.auth_attempts[-1] == ("XOAUTH2", MAILBOX, False)
    # A reload whose secret file cannot be read is refused, naming the key.
    (tmp_path / "client-secret").unlink()
    refused = relay.hup()
    assert "reload refused" in refused, refused
    assert "[delivery.smarthost] oauth2.client_secret_file" in refused
    (tmp_path / "client-secret").write_text("second client secret\n")
    assert "configuration reloaded" in relay.hup()
    wait_removed(relay, qid)
    assert deliveries(relay, qid)[-1].status == "sent"
    assert sink.auth_attempts[-1] == ("XOAUTH2", MAILBOX, True)


def test_oauth_login_device_code_stores_the_refresh_token(
    server: TokenServer, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    server.device_mailbox = MAILBOX  # the operator signs in on another device at once
    refresh = tmp_path / "refresh-token"
    oauth2 = {
        "token_url": server.url,
        "device_authorization_url": server.device_url,
        "client_id": server.client_id,
        "grant": "refresh_token",
        "refresh_token_file": str(refresh),
    }
    relay = make_daemon(
        start=False,  # no daemon: the refresh token file does not exist yet
        overrides={
            "delivery.smarthost": {"auth": "xoauth2", "username": MAILBOX},
            "delivery.smarthost.oauth2": oauth2,
        },
    )
    done = relay.cli("oauth", "login", "smarthost", check=False)
    assert done.returncode == 0, done.stderr
    assert f"open {server.url.removesuffix('/token')}/verify and enter the code ABCD-EFGH" in (
        done.stdout
    )
    assert f"refresh token stored in {refresh} (mode 0600)" in done.stdout
    token = refresh.read_text().strip()
    assert server.refresh_tokens[token] == MAILBOX
    assert stat.S_IMODE(refresh.stat().st_mode) == 0o600
    assert server.count("device_authorization") == 1
    # A route of another grant has nothing to store: a clear refusal, exit 1.
    relay.reconfigure({"delivery.smarthost.oauth2": {"grant": "client_credentials"}})
    (tmp_path / "secret").write_text("x\n")
    relay.reconfigure(
        {"delivery.smarthost.oauth2": {"client_secret_file": str(tmp_path / "secret")}}
    )
    refused = relay.cli("oauth", "login", "smarthost", check=False)
    assert refused.returncode == 1
    assert 'oauth2.grant: is "client_credentials"; login is for "refresh_token"' in refused.stderr
