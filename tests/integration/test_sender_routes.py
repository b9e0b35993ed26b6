"""Per-sender routes: each app leaves through its own upstream under its own identity.

Three SMTP users of the relay reach three upstreams: the scanner's mail goes up with a
password as scanner@company.test with its envelope sender and From: rewritten (the
original kept in Reply-To:), the ERP's over XOAUTH2 with a token from the loopback token
endpoint, the CRM's (matched by sender domain) with a password of its own; a user no
sender route matches takes the default (the smarthost). `smtprelay route` prints the
same choices, and `smtprelay oauth test` authenticates to the ERP's upstream.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from smtprelay.usersfile import hash_password, write_users
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.delivery_support import (
    MX1,
    MX2,
    MX3,
    deliveries,
    make_message,
    send,
    wait_removed,
    wait_status,
)
from tests.integration.inbound_support import client_context
from tests.integration.oauth_server import OAuthSink, TokenServer
from tests.integration.sinks import Sink

pytest_plugins = ["tests.integration.delivery_fixtures"]

USERS = {"scanner": "scanner-pw", "erp": "erp-pw", "crm": "crm-pw", "other": "other-pw"}
SCANNER_BOX, ERP_BOX, CRM_BOX = "scanner@company.test", "erp@company.test", "crm@company.test"
RCPT, PARTNER = "someone@customer.test", "desk@partner.test"


@pytest.fixture
def server() -> Iterator[TokenServer]:
    server = TokenServer(app_mailboxes={ERP_BOX}).start()
    yield server
    server.stop()


@pytest.fixture
def setup(
    server: TokenServer,
    make_sink: Callable[..., Sink],
    delivering_relay: Callable[..., Daemon],
    sink_port: int,
    sink_cert: trustme.LeafCert,
    tmp_path: Path,
) -> Iterator[tuple[Daemon, Sink, OAuthSink, Sink]]:
    scanner = make_sink(MX1, tls_cert=sink_cert, auth=(SCANNER_BOX, "up-1"), auth_required=True)
    erp = OAuthSink(MX2, sink_port, server, tls_cert=sink_cert)
    erp.start()
    crm = make_sink(MX3, tls_cert=sink_cert, auth=(CRM_BOX, "up-3"), auth_required=True)
    secrets = {}
    for name, text in (("scanner", "up-1"), ("crm", "up-3"), ("client", server.client_secret)):
        secrets[name] = tmp_path / f"{name}.secret"
        secrets[name].write_text(text + "\n")
    sender_routes: list[dict[str, Any]] = [
        {
            "auth_user": "scanner",
            "hosts": [f"{MX1}:{sink_port}"],
            "username": SCANNER_BOX,
            "password_file": str(secrets["scanner"]),
            "rewrite_from": SCANNER_BOX,
            "keep_reply_to": True,
        },
        {
            "auth_user": "erp",
            "hosts": [f"{MX2}:{sink_port}"],
            "auth": "xoauth2",
            "username": ERP_BOX,
            "oauth2": {
                "token_url": server.url,
                "client_id": server.client_id,
                "client_secret_file": str(secrets["client"]),
            },
        },
        {
            "sender_domain": "crm.local",
            "hosts": [f"{MX3}:{sink_port}"],
            "username": CRM_BOX,
            "password_file": str(secrets["crm"]),
        },
        {"http_token": "billing", "name": "billing", "hosts": [f"{MX3}:{sink_port}"]},
    ]
    # A route table for one recipient domain comes before every sender route.
    routes = {
        "partner.test": {
            "hosts": [f"{MX3}:{sink_port}"],
            "username": CRM_BOX,
            "password_file": str(secrets["crm"]),
        }
    }
    relay = delivering_relay(
        delivery={"mode": "smarthost", "sender_routes": sender_routes, "routes": routes},
        # The default: a closed port, so unmatched mail stays deferred.
        **{"delivery.smarthost": {"hosts": [f"{LOOPBACK}:9"], "tls": "none"}},
    )
    # Written here rather than by four `smtprelay user add` processes: seconds saved.
    write_users(relay.users_file, {n: hash_password(p) for n, p in USERS.items()})
    yield relay, scanner, erp, crm
    erp.stop()


def _submit_as(
    relay: Daemon, user: str, sender: str, data: bytes, rcpts: tuple[str, ...] = (RCPT,)
) -> str:
    with smtplib.SMTP(LOOPBACK, relay.port, local_hostname="client.test", timeout=30) as c:
        c.starttls(context=client_context(relay))
        c.login(user, USERS[user])
        return send(c, list(rcpts), data, sender)


def test_three_users_three_upstreams_own_identities(
    setup: tuple[Daemon, Sink, OAuthSink, Sink],
) -> None:
    relay, scanner, erp, crm = setup
    scan_data = make_message("scan", sender="scan@printer.local").replace(
        b"From: <scan@printer.local>", b"From: Scan Station <scan@printer.local>"
    )
    qids = {
        "scanner": _submit_as(relay, "scanner", "scan@printer.local", scan_data, (RCPT, PARTNER)),
        "erp": _submit_as(
            relay, "erp", "erp@erp.local", make_message("erp", sender="erp@erp.local")
        ),
        "crm": _submit_as(
            relay, "crm", "sales@crm.local", make_message("crm", sender="sales@crm.local")
        ),
        "other": _submit_as(relay, "other", "x@other.local", make_message("other")),
    }
    for user in ("scanner", "erp", "crm"):
        wait_removed(relay, qids[user])
    [deferred] = wait_status(relay, qids["other"], RCPT, "deferred")[:1]
    assert deferred.relay in ("none", "127.0.0.1[127.0.0.1]:9"), deferred

    # The scanner: its mailbox, its password, its identity on the envelope and in From:.
    [got] = scanner.messages
    assert (got.auth_user, got.mail_from, got.tls) == (SCANNER_BOX, SCANNER_BOX, True)
    assert b"\r\nFrom: Scan Station <scanner@company.test>\r\n" in got.content
    assert b"\r\nReply-To: Scan Station <scan@printer.local>\r\n" in got.content
    assert got.content.count(b"\r\nFrom: ") == 1  # replaced, not added
    # The ERP: XOAUTH2 with a token for its mailbox; no rewrite asked, none done.
    [got] = erp.messages
    assert (got.auth_user, got.mail_from) == (ERP_BOX, "erp@erp.local")
    assert erp.auth_attempts == [("XOAUTH2", ERP_BOX, True)]
    assert b"Reply-To:" not in got.content
    # The CRM, matched by its sender domain; and the scanner's copy for partner.test,
    # which the route table of that domain took, as it was (no rewrite there).
    by_sender = {m.mail_from: m for m in crm.messages}
    assert sorted(by_sender) == ["sales@crm.local", "scan@printer.local"]
    got = by_sender["sales@crm.local"]
    assert (got.auth_user, got.rcpt_tos) == (CRM_BOX, (RCPT,))
    got = by_sender["scan@printer.local"]
    assert (got.auth_user, got.rcpt_tos) == (CRM_BOX, (PARTNER,))
    assert b"\r\nFrom: Scan Station <scan@printer.local>\r\n" in got.content
    assert b"Reply-To:" not in got.content
    assert scanner.messages[0].rcpt_tos == (RCPT,)
    # The user no sender route matches reached none of them.
    assert len(scanner.messages) + len(erp.messages) + len(crm.messages) == 4

    log = relay.log()
    assert f"{qids['scanner']}: sender route auth_user=scanner: upstream=[{MX1}:" in log
    assert f"as {SCANNER_BOX} from=<scan@printer.local> rewritten to <{SCANNER_BOX}>" in log
    assert f"{qids['erp']}: sender route auth_user=erp: upstream=[{MX2}:" in log
    assert f"{qids['crm']}: sender route sender_domain=crm.local: upstream=[{MX3}:" in log
    assert f"{qids['other']}: sender route" not in log
    for user, sent in (("scanner", 2), ("erp", 1), ("crm", 1)):
        assert [d.status for d in deliveries(relay, qids[user])] == ["sent"] * sent


def test_route_and_oauth_test_commands(
    setup: tuple[Daemon, Sink, OAuthSink, Sink], sink_port: int, server: TokenServer
) -> None:
    relay = setup[0]
    out = relay.cli("route", "--user", "scanner", "--from", "a@b.test").stdout
    assert out.splitlines() == [
        "from=<a@b.test> user=scanner",
        "route: sender route auth_user=scanner ([[delivery.sender_routes]] #1)",
        f"upstream: {MX1}:{sink_port} (tls starttls, AUTH as {SCANNER_BOX})",
        f"rewrite_from: {SCANNER_BOX} (the original From: kept in Reply-To:)",
        "note: recipient domains of [delivery.routes] go their own way first: partner.test",
    ]
    out = relay.cli("route", "--user", "scanner", "--from", "a@b.test", "--to", PARTNER).stdout
    assert out.splitlines()[1:] == [
        'route: [delivery.routes] "partner.test"',
        f"upstream: {MX3}:{sink_port} (tls starttls, AUTH as {CRM_BOX})",
    ]
    out = relay.cli("route", "--user", "erp", "--from", "a@b.test").stdout
    assert (
        f"upstream: {MX2}:{sink_port} (tls starttls, AUTH XOAUTH2 as {ERP_BOX}; tokens: "
        f"generic, grant client_credentials, {server.url})"
    ) in out
    out = relay.cli("route", "--user", "other", "--from", "x@crm.local").stdout
    assert "route: sender route sender_domain=crm.local ([[delivery.sender_routes]] #3)" in out
    out = relay.cli("route", "--token", "billing", "--from", "x@y.test").stdout
    assert "route: sender route billing ([[delivery.sender_routes]] #4)" in out
    out = relay.cli("route", "--user", "other", "--from", "x@other.test").stdout
    assert "route: default, the smarthost" in out
    assert f"upstream: {LOOPBACK}:9 (tls none, no AUTH)" in out

    # oauth test: a token, then EHLO + STARTTLS + AUTH XOAUTH2 to the ERP's upstream.
    erp = setup[2]
    done = relay.cli("oauth", "test", "auth_user=erp", check=False)
    assert done.returncode == 0, done.stderr
    assert f"authenticated as {ERP_BOX}" in done.stdout
    assert erp.auth_attempts == [("XOAUTH2", ERP_BOX, True)]
    assert erp.messages == []
    missing = relay.cli("oauth", "test", "nosuch", check=False)
    assert missing.returncode == 1
    assert "no upstream named 'nosuch'; with OAuth2: auth_user=erp" in missing.stderr
    server.client_secret = "rotated"
    refused = relay.cli("oauth", "test", "auth_user=erp", check=False)
    assert refused.returncode == 1
    assert "invalid_client" in refused.stderr and "Traceback" not in refused.stderr
