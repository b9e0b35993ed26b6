"""Local submission (inbound/local.py): domainless addresses get ``@[server] origin``
in the commands and headers; the [server] keys of the socket are checked."""

from __future__ import annotations

from typing import Any

import pytest

from smtprelay import config
from smtprelay.inbound.local import qualify_address_list, qualify_command, qualify_headers

ORIGIN = "origin.test"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" root (Cron Daemon)", f" root@{ORIGIN} (Cron Daemon)"),  # cron's From:
        (" root", f" root@{ORIGIN}"),
        (" Bob <bob>, alice, x@y.test", f" Bob <bob@{ORIGIN}>, alice@{ORIGIN}, x@y.test"),
        (' "Dee, D." <dee>', f' "Dee, D." <dee@{ORIGIN}>'),  # the comma is quoted
        (" first.last", f" first.last@{ORIGIN}"),
        (" =?utf-8?q?J=C3=B6?= <jo>", f" =?utf-8?q?J=C3=B6?= <jo@{ORIGIN}>"),
        (" a (nested (comment) \\) here)", f" a@{ORIGIN} (nested (comment) \\) here)"),
        (" Team: a, b@c.test;, d", f" Team: a@{ORIGIN}, b@c.test;, d@{ORIGIN}"),  # a group
        (" root,\r\n\tbob\r\n", f" root@{ORIGIN},\r\n\tbob@{ORIGIN}\r\n"),  # folded
    ],
)
def test_address_lists_are_qualified(value: str, expected: str) -> None:
    assert qualify_address_list(value, ORIGIN) == expected


@pytest.mark.parametrize(
    "value",
    [
        " root@host.test (x)",
        " undisclosed-recipients:;",
        " Cron Daemon",  # a phrase, not an address
        " <>",
        " Bob <bob",  # malformed: left as it is
        ' "quoted local"@x.test',
        "",
    ],
)
def test_left_alone(value: str) -> None:
    assert qualify_address_list(value, ORIGIN) == value


def test_headers_only_address_fields_and_only_the_header_section() -> None:
    raw = (
        b"From: root (Cron Daemon)\nTo: root,\n  bob\r\nSubject: To: x\n"
        b"X-Note: root\nresent-to: ann\n\nTo: body\n..\n"
    )
    assert qualify_headers(raw, ORIGIN) == (
        b"From: root@origin.test (Cron Daemon)\nTo: root@origin.test,\n  bob@origin.test\r\n"
        b"Subject: To: x\nX-Note: root\nresent-to: ann@origin.test\n\nTo: body\n..\n"
    )


def test_headers_unchanged_is_the_same_object() -> None:
    raw = b"From: a@b.test\r\nSubject: s\r\n\r\nbody\r\n"
    assert qualify_headers(raw, ORIGIN) is raw
    no_headers = b"no header at all\r\nTo: x\r\n"
    assert qualify_headers(no_headers, ORIGIN) == no_headers


def test_non_utf8_header_bytes_survive() -> None:
    raw = b"From: J\xf6rg <joerg>\r\n\r\nx\r\n"
    assert qualify_headers(raw, ORIGIN) == b"From: J\xf6rg <joerg@origin.test>\r\n\r\nx\r\n"


@pytest.mark.parametrize(
    ("arg", "expected", "given"),
    [
        ("FROM:<www-data> SIZE=9", f"FROM:<www-data@{ORIGIN}> SIZE=9", "www-data"),
        ("from: root", f"from: root@{ORIGIN}", "root"),
        ("TO:<root> NOTIFY=NEVER", f"TO:<root@{ORIGIN}> NOTIFY=NEVER", "root"),
        ("FROM:<>", "FROM:<>", ""),
        ("TO:<a@b.test>", "TO:<a@b.test>", "a@b.test"),
        ("garbage", "garbage", None),
        (None, None, None),
    ],
)
def test_commands(arg: str | None, expected: str | None, given: str | None) -> None:
    assert qualify_command(arg, ORIGIN) == (expected, given)


def test_socket_keys_and_origin() -> None:
    server = config.parse({"server": {"hostname": "Relay.Test."}}).server
    assert (server.origin, server.origin_domain) == ("", "relay.test")
    assert server.local_socket == config.DEFAULT_LOCAL_SOCKET
    assert (server.local_socket_mode, server.local_socket_group) == (0o666, "")
    server = config.parse(
        {"server": {"origin": "Example.ORG", "local_socket": "", "local_socket_mode": "0660"}}
    ).server
    assert (server.origin_domain, server.local_socket, server.local_socket_mode) == (
        "example.org",
        "",
        0o660,
    )
    text = config.effective(config.parse({"server": {"local_socket_mode": "600"}}))
    assert 'local_socket_mode = "0600"' in text  # round-trips through check-config


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            {"local_socket": "run/submit.sock"},
            "[server] local_socket: 'run/submit.sock' is not an absolute path",
        ),
        ({"local_socket": "/" + "x" * 120}, "longer than 107 bytes"),
        ({"local_socket_mode": "0999"}, "[server] local_socket_mode: '0999' is not a file mode"),
        ({"local_socket_mode": 666}, "[server] local_socket_mode: 666 is not a file mode"),
        ({"origin": "a@b"}, "[server] origin: 'a@b' is not a domain name"),
    ],
)
def test_bad_socket_keys_name_the_key(server: dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.parse({"server": server})
    assert message in str(caught.value)
