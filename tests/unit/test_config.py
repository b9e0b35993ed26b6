"""smtprelay.config: TOML -> frozen settings; errors name the key in one line."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay import config
from smtprelay.config import ConfigError
from smtprelay.units import Endpoint


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(raw)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    assert "Traceback" not in message
    return message


# --- defaults -------------------------------------------------------------------------


def test_defaults_from_empty_dict() -> None:
    s = config.parse({})
    assert s.server.listen == (Endpoint("127.0.0.1", 2525),)
    assert s.server.listen_implicit_tls == ()
    assert s.server.max_message_size == 25_000_000
    assert s.server.max_recipients == 1000
    assert s.server.max_connections == 200
    assert s.server.timeout == 300.0
    assert s.server.hostname  # the FQDN of this machine, never empty
    assert s.tls.min_version == "TLSv1.2"
    assert s.tls.cert_file == "" and s.tls.key_file == ""
    assert s.auth.users_file == "" and s.auth.allow_plaintext is False
    assert s.auth.authenticated_header is False
    assert s.relay.trusted_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert s.relay.allowed_sender_domains == ()
    assert s.relay.allowed_recipient_domains == ()
    assert s.spool.dir
    assert s.log.format == "text" and s.log.level == "info"


def test_empty_sections_are_defaults() -> None:
    sections = ["server", "tls", "auth", "relay", "spool", "log"]
    assert config.parse({name: {} for name in sections}) == config.parse({})


def test_values_are_converted() -> None:
    s = config.parse(
        {
            "server": {
                "hostname": "relay.example.net",
                "listen": ["0.0.0.0:25", "[::]:25"],
                "listen_implicit_tls": ["127.0.0.1:465"],
                "max_message_size": "10MiB",
                "timeout": "5m",
            },
            "relay": {
                "trusted_networks": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
                "allowed_sender_domains": ["Example.COM.", ".example.org"],
            },
            "tls": {"min_version": "TLSv1"},
        }
    )
    assert s.server.listen == (Endpoint("0.0.0.0", 25), Endpoint("::", 25))
    assert s.server.listen_implicit_tls == (Endpoint("127.0.0.1", 465),)
    assert s.server.max_message_size == 10 * 1024 * 1024
    assert s.server.timeout == 300.0
    assert s.relay.trusted_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    # Domains are compared case-insensitively and without the root dot.
    assert s.relay.allowed_sender_domains == ("example.com", ".example.org")
    assert s.tls.min_version == "TLSv1"


# --- errors name the key in one line ----------------------------------------------------


def test_unknown_key() -> None:
    assert _error({"server": {"foo": 1}}) == "[server] foo: unknown key"


def test_unknown_section() -> None:
    assert _error({"bogus": {"a": 1}}) == "[bogus]: unknown section"


def test_bad_duration() -> None:
    message = _error({"server": {"timeout": "5x"}})
    assert message.startswith("[server] timeout: '5x' is not a duration")


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"server": {"max_recipients": "abc"}}, "[server] max_recipients:"),
        ({"server": {"max_recipients": 1.5}}, "[server] max_recipients:"),
        ({"server": {"max_recipients": 0}}, "[server] max_recipients:"),
        ({"server": {"max_connections": -1}}, "[server] max_connections:"),
        ({"server": {"max_message_size": "25XB"}}, "[server] max_message_size:"),
        ({"server": {"hostname": ""}}, "[server] hostname:"),
        ({"server": {"hostname": 5}}, "[server] hostname:"),
        ({"server": {"listen": "127.0.0.1:25"}}, "[server] listen:"),
        ({"server": {"listen": ["127.0.0.1"]}}, "[server] listen[0]:"),
        ({"server": {"listen": ["127.0.0.1:25", "::1:25"]}}, "[server] listen[1]:"),
        ({"server": {"timeout": -5}}, "[server] timeout:"),
        ({"server": {"timeout": "0s"}}, "[server] timeout:"),
        ({"server": 5}, "[server]"),
        ({"auth": {"allow_plaintext": "sometimes"}}, "[auth] allow_plaintext:"),
        ({"auth": {"authenticated_header": "no"}}, "[auth] authenticated_header:"),
        ({"relay": {"trusted_networks": ["10.0.0.0/33"]}}, "[relay] trusted_networks[0]:"),
        ({"relay": {"trusted_networks": ["not-a-net"]}}, "[relay] trusted_networks[0]:"),
        ({"relay": {"trusted_networks": [10]}}, "[relay] trusted_networks[0]:"),
        ({"relay": {"allowed_sender_domains": ["a b"]}}, "[relay] allowed_sender_domains[0]:"),
        ({"relay": {"allowed_recipient_domains": ["@x"]}}, "[relay] allowed_recipient_domains[0]:"),
        ({"tls": {"min_version": "TLSv9"}}, "[tls] min_version:"),
        ({"tls": {"min_version": "SSLv3"}}, "[tls] min_version:"),
        ({"log": {"format": "xml"}}, "[log] format:"),
        ({"log": {"level": "loud"}}, "[log] level:"),
        ({"spool": {"dir": ["a"]}}, "[spool] dir:"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, Any], where: str) -> None:
    assert _error(raw).startswith(where)


def test_value_with_colon_still_names_the_key() -> None:
    message = _error({"server": {"timeout": "a: b"}})
    assert message.startswith("[server] timeout: 'a: b' is not a duration"), message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"delivery": {"retry_schedule": ["5m", "5x"]}},
            "[delivery] retry_schedule[1]: '5x' is not a duration",
        ),
        ({"delivery": {"retry_schedule": []}}, "[delivery] retry_schedule:"),
        ({"delivery": {"smarthost": {"foo": 1}}}, "[delivery.smarthost] foo: unknown key"),
        ({"delivery": {"bogus": {}}}, "[delivery] bogus: unknown key"),
        ({"delivery": {"mode": "smarthost"}}, "[delivery.smarthost] hosts:"),
        ({"delivery": {"smarthost": {"username": "u"}}}, "[delivery.smarthost] password_file:"),
        ({"delivery": {"routes": {"example.com": "nope"}}}, "[delivery.routes] example.com:"),
        ({"delivery": {"nameservers": ["dns.example:53"]}}, "[delivery] nameservers[0]:"),
        ({"delivery": {"tls": "maybe"}}, "[delivery] tls: 'maybe'"),
        ({"delivery": {"port": 0}}, "[delivery] port:"),
        (
            {"delivery": {"line_length_limit": -1}},
            "[delivery] line_length_limit: -1 is neither 0 (off) nor at least 78 octets",
        ),
        (
            {"delivery": {"line_length_limit": 77}},
            "[delivery] line_length_limit: 77 is neither 0 (off) nor at least 78 octets",
        ),
        ({"delivery": {"line_length_limit": "998"}}, "[delivery] line_length_limit:"),
        ({"delivery": {"line_length_limit": True}}, "[delivery] line_length_limit:"),
    ],
)
def test_delivery_errors_name_the_table_and_key(raw: dict[str, Any], expected: str) -> None:
    assert _error(raw).startswith(expected)


@pytest.mark.parametrize(("value", "expected"), [(None, 998), (0, 0), (78, 78), (4096, 4096)])
def test_line_length_limit(value: int | None, expected: int) -> None:
    """Postfix's smtp_line_length_limit: 998 by default, 0 turns folding off."""
    raw = {} if value is None else {"delivery": {"line_length_limit": value}}
    assert config.parse(raw).delivery.line_length_limit == expected


def test_bad_network_message_quotes_value() -> None:
    message = _error({"relay": {"trusted_networks": ["10.0.0.0/33"]}})
    assert "'10.0.0.0/33'" in message and "not an IP network" in message


def test_bad_min_version_lists_choices() -> None:
    message = _error({"tls": {"min_version": "TLSv9"}})
    assert "'TLSv9'" in message and "TLSv1.2" in message


def test_several_errors_say_so_in_one_line() -> None:
    message = _error({"server": {"timeout": "5x", "max_recipients": "many"}})
    assert "more error" in message


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        # TOML has real integers and booleans; DESIGN.md: "wrong types are errors".
        ({"server": {"max_recipients": True}}, "[server] max_recipients:"),
        ({"auth": {"allow_plaintext": "yes"}}, "[auth] allow_plaintext:"),
        ({"auth": {"allow_plaintext": 1}}, "[auth] allow_plaintext:"),
    ],
)
def test_wrong_toml_type_is_an_error(raw: dict[str, Any], where: str) -> None:
    assert _error(raw).startswith(where)


# --- load -----------------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)
    assert "no such file" in str(info.value)


def test_load_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\nlisten = \n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_directory_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        config.load(tmp_path)


def test_load_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[server]\ntimeout = "30s"\nlisten = ["[::1]:2526"]\n')
    s = config.load(path)
    assert s.server.timeout == 30.0
    assert s.server.listen == (Endpoint("::1", 2526),)


def test_load_bad_value_names_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\ntimeout = "5x"\n')
    with pytest.raises(ConfigError, match=r"^\[server\] timeout: '5x' is not a duration"):
        config.load(path)


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMTPRELAY_CONFIG", raising=False)
    assert config.config_path(None) == config.DEFAULT_CONFIG_PATH
    monkeypatch.setenv("SMTPRELAY_CONFIG", "/tmp/from-env.toml")
    assert config.config_path(None) == Path("/tmp/from-env.toml")
    assert config.config_path("/tmp/explicit.toml") == Path("/tmp/explicit.toml")


# --- effective() re-parses to the same settings ----------------------------------------

_NON_DEFAULT = [
    {},
    {
        "server": {
            "hostname": "relay.example.net",
            "timeout": "45s",
            "max_message_size": "10MiB",
            "max_recipients": 5,
            "max_connections": 7,
            "listen": ["0.0.0.0:25", "[::1]:2525"],
            "listen_implicit_tls": ["[::]:465"],
        }
    },
    {"server": {"timeout": 0.25}},
    {"server": {"timeout": "7d"}},
    {"server": {"timeout": 1_000_001}},
    {
        "tls": {
            "cert_file": '/etc/ssl/a "quoted" path.pem',
            "key_file": "C:\\keys\\k.pem",
            "min_version": "TLSv1.3",
        }
    },
    {"auth": {"users_file": "/etc/smtprelay/users", "allow_plaintext": True}},
    {
        "relay": {
            "trusted_networks": [],
            "allowed_sender_domains": ["example.com", ".example.org"],
            "allowed_recipient_domains": ["b\u00fccher.example"],
        }
    },
    {"relay": {"trusted_networks": ["10.0.0.0/8", "2001:db8::/32", "::ffff:0:0/96"]}},
    {"spool": {"dir": "/var/spool/smtprelay"}, "log": {"format": "json", "level": "debug"}},
    {
        "delivery": {
            "mode": "smarthost",
            "port": 2525,
            "tls": "verify",
            "ca_file": "/ca.pem",
            "nameservers": ["127.0.0.1:5353", "::1"],
            "concurrency": 3,
            "retry_schedule": ["1m", "90s", "1h", 7],
            "max_queue_lifetime": "2d",
            "line_length_limit": 0,
            "smarthost": {
                "hosts": ["smtp.example:587", "[2001:db8::1]:465"],
                "tls": "implicit",
                "username": "u",
                "password_file": "/p",
            },
            "routes": {"Example.COM": "127.0.0.2:2525", "b\u00fccher.example": "[::1]:25"},
        }
    },
    {
        "events": {"retention": "2d", "webhook_retry_schedule": ["0s", "5s"]},
        "webhooks": [
            {"url": "https://a.example/h", "secret_file": "/a", "events": ["recipient.*"]},
            {"url": "http://127.0.0.1:9/h", "secret_file": "/b", "allow_private": True},
        ],
    },
]


@pytest.mark.parametrize("raw", _NON_DEFAULT)
def test_effective_reparses_to_same_settings(raw: dict[str, Any]) -> None:
    settings = config.parse(raw)
    text = config.effective(settings)
    assert config.parse(tomllib.loads(text)) == settings


def test_effective_shows_every_key() -> None:
    settings = config.parse({})
    parsed = tomllib.loads(config.effective(settings))
    for section_name, section in settings:
        if isinstance(section, tuple):  # [[webhooks]]: none by default
            assert parsed[section_name] == []
            continue
        assert set(parsed[section_name]) == set(type(section).model_fields)


@given(
    hostname=st.text(min_size=1, max_size=30),
    spool_dir=st.text(min_size=1, max_size=30),
    timeout=st.integers(min_value=1, max_value=10**7),
    size=st.integers(min_value=1, max_value=10**12),
)
def test_effective_reparses_property(
    hostname: str, spool_dir: str, timeout: int, size: int
) -> None:
    """For any accepted configuration, check-config output is TOML describing the same
    settings (operators copy it into a file)."""
    settings = config.parse(
        {
            "server": {"hostname": hostname, "timeout": timeout, "max_message_size": size},
            "spool": {"dir": spool_dir},
        }
    )
    assert config.parse(tomllib.loads(config.effective(settings))) == settings


# --- frozen ---------------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    settings = config.parse({})
    with pytest.raises(Exception) as info:
        settings.server.timeout = 1.0
    assert settings.server.timeout == 300.0
    assert "frozen" in str(info.value).lower()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its ValidationError
        settings.server = settings.server
    with pytest.raises(AttributeError):
        settings.relay.trusted_networks.append(None)  # type: ignore[attr-defined]
