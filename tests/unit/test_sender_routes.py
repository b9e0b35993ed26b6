"""Choosing the upstream (routes.Router) and rewriting the identity (rewrite.rewrite_from).

Precedence: a route of the recipient domain, then the first sender route that matches
(SMTP user, HTTP token, sender, sender domain), then the smarthost, else MX; each
upstream's destination key names its hosts and mailbox. The rewrite changes the
envelope sender and the From: address only, keeps the display name, and keeps the
original From: in a Reply-To: when asked and none is there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtprelay import config
from smtprelay.delivery.resolver import Resolver
from smtprelay.delivery.rewrite import rewrite_from
from smtprelay.delivery.routes import FromRewrite, Router
from smtprelay.envelope import Client, Submission, SubmittedVia
from tests.unit.helpers import make_envelope


@pytest.fixture
def router(tmp_path: Path) -> Router:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    settings = config.parse(
        {
            "delivery": {
                "mode": "smarthost",
                "smarthost": {"hosts": ["smart.example:587"]},
                "routes": {
                    "internal.example": "10.0.0.5:25",
                    "partner.example": {"hosts": ["mx.partner.example:587"], "tls": "implicit"},
                },
                "sender_routes": [
                    {
                        "auth_user": "scanner",
                        "hosts": ["smtp.office365.example:587"],
                        "username": "scanner@company.example",
                        "password_file": str(pw),
                        "rewrite_from": "scanner@company.example",
                    },
                    {
                        "http_token": "billing",
                        "hosts": ["smtp.office365.example:587"],
                        "username": "billing@company.example",
                        "password_file": str(pw),
                    },
                    {"sender": "CEO@Company.example", "hosts": ["vip.example:25"]},
                    {"sender_domain": "crm.example", "hosts": ["crm-relay.example:25"]},
                    {"auth_user": "ceo", "hosts": ["never.example:25"]},  # a later match
                ],
            }
        }
    ).delivery
    resolver = Resolver((), port=25, own_names=(), own_endpoints=())
    return Router(settings, resolver)


def _envelope(**overrides: Any) -> Any:
    return make_envelope(**overrides)


def test_first_match_wins_and_default_last(router: Router) -> None:
    scanner = _envelope(client=Client("192.0.2.1", 1, "h", auth_user="scanner"))
    route = router.route("customer.example", scanner)
    assert route.name == "sender route auth_user=scanner"
    assert route.key == "[smtp.office365.example:587] as scanner@company.example"
    assert route.credentials is not None and route.credentials.password == "secret"
    assert route.rewrite == FromRewrite("scanner@company.example")
    billing = _envelope(submission=Submission(via=SubmittedVia.HTTP, token="billing"))
    assert router.route("x.example", billing).key == (
        "[smtp.office365.example:587] as billing@company.example"
    )  # the same provider, another mailbox: another destination
    ceo = _envelope(sender="ceo@company.example", client=Client("1", 1, "h", auth_user="ceo"))
    assert router.route("x.example", ceo).name == "sender route sender=CEO@Company.example"
    crm = _envelope(sender="sales@CRM.example")
    assert router.route("x.example", crm).name == "sender route sender_domain=crm.example"
    other = _envelope(client=Client("1", 1, "h", auth_user="someone"))
    assert router.route("x.example", other).key == "smarthost:smart.example:587"
    assert router.route("x.example").key == "smarthost:smart.example:587"  # no envelope


def test_recipient_domain_routes_come_first(router: Router) -> None:
    scanner = _envelope(client=Client("1", 1, "h", auth_user="scanner"))
    plain = router.route("internal.example", scanner)
    assert (plain.key, plain.name, plain.rewrite) == (
        "[10.0.0.5:25]",
        'route "internal.example"',
        None,
    )
    table = router.route("partner.example", scanner)
    assert table.key == "[mx.partner.example:587]" and table.tls.value == "implicit"


def test_the_null_sender_matches_no_sender_matcher(router: Router) -> None:
    notice = _envelope(sender="")
    assert router.route("x.example", notice).name == "smarthost"


def test_token_matcher_needs_the_http_submission(router: Router) -> None:
    smtp = _envelope(submission=Submission(via=SubmittedVia.SMTP, token="billing"))
    assert router.route("x.example", smtp).name == "smarthost"


def test_a_missing_password_file_names_the_entry(tmp_path: Path) -> None:
    settings = config.parse(
        {
            "delivery": {
                "sender_routes": [
                    {
                        "auth_user": "a",
                        "hosts": ["h:1"],
                        "username": "u",
                        "password_file": str(tmp_path / "nope"),
                    }
                ]
            }
        }
    ).delivery
    with pytest.raises(
        OSError, match=r"^\[Errno 2\] \[\[delivery.sender_routes\]\] #1 password_file"
    ):
        Router(settings, Resolver((), port=25, own_names=(), own_endpoints=()))


MESSAGE = (
    b"Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    b'From: "Scan Station"\r\n <scan@printer.local>\r\n'
    b"To: someone@customer.example\r\n"
    b"Subject: scan\r\n"
    b"\r\n"
    b"From: not a header, a body line\r\n"
)


def test_rewrite_keeps_the_display_name_and_the_body() -> None:
    sender, data = rewrite_from(
        FromRewrite("scanner@company.example"), "scan@printer.local", MESSAGE
    )
    assert sender == "scanner@company.example"
    assert data == (
        b"Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        b"From: Scan Station <scanner@company.example>\r\n"
        b"To: someone@customer.example\r\n"
        b"Subject: scan\r\n"
        b"\r\n"
        b"From: not a header, a body line\r\n"
    )


def test_rewrite_keeps_the_original_in_reply_to_unless_there_is_one() -> None:
    _, data = rewrite_from(FromRewrite("s@company.example", True), "scan@printer.local", MESSAGE)
    assert b'\r\nReply-To: "Scan Station" <scan@printer.local>\r\nTo:' in data
    own = MESSAGE.replace(b"Subject: scan", b"Reply-To: desk@company.example\r\nSubject: scan")
    _, data = rewrite_from(FromRewrite("s@company.example", True), "scan@printer.local", own)
    assert data.count(b"Reply-To:") == 1 and b"Reply-To: desk@company.example" in data


def test_rewrite_adds_a_from_where_there_was_none() -> None:
    _, data = rewrite_from(FromRewrite("s@company.example"), "a@b", b"Subject: x\r\n\r\nbody\r\n")
    assert data == b"From: s@company.example\r\nSubject: x\r\n\r\nbody\r\n"


def test_no_rewrite_and_null_sender_leave_everything_alone() -> None:
    assert rewrite_from(None, "a@b", MESSAGE) == ("a@b", MESSAGE)
    assert rewrite_from(FromRewrite("s@company.example"), "", MESSAGE) == ("", MESSAGE)


def test_encoded_display_names_stay_encoded() -> None:
    message = b"From: =?utf-8?q?J=C3=B6rg?= <j@x.example>\r\n\r\nbody\r\n"
    _, data = rewrite_from(FromRewrite("s@company.example"), "j@x.example", message)
    assert data.startswith(b"From: =?utf-8?q?J=C3=B6rg?= <s@company.example>\r\n")
