"""The upstream keys of issue 14: auth/oauth2 on the smarthost, route tables and
[[delivery.sender_routes]]; every mistake is one line naming the table (or entry) and key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from smtprelay import config
from smtprelay.config import ConfigError, RouteSettings
from smtprelay.units import Endpoint

OAUTH = {"token_url": "http://127.0.0.1:8080/token", "client_id": "c", "client_secret_file": "/s"}
XOAUTH2 = {"hosts": ["smtp.example:587"], "auth": "xoauth2", "username": "box@example.com"}


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(raw)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _smarthost(**keys: Any) -> dict[str, Any]:
    return {"delivery": {"smarthost": keys}}


def _sender_routes(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"delivery": {"sender_routes": list(entries)}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            _smarthost(**XOAUTH2),
            '[delivery.smarthost] oauth2: a table is required when auth = "xoauth2"',
        ),
        (
            _smarthost(hosts=["h:1"], auth="xoauth2", oauth2=OAUTH),
            '[delivery.smarthost] username: required when auth = "xoauth2" (the mailbox)',
        ),
        (
            _smarthost(hosts=["h:1"], auth="kerberos"),
            "[delivery.smarthost] auth: 'kerberos': input should be 'password' or 'xoauth2'",
        ),
        (
            _smarthost(hosts=["h:1"], username="u", password_file="/p", oauth2=OAUTH),
            '[delivery.smarthost] oauth2: only used with auth = "xoauth2"',
        ),
        (
            _smarthost(**XOAUTH2, password_file="/p", oauth2=OAUTH),
            '[delivery.smarthost] password_file: not used when auth = "xoauth2"',
        ),
        (
            _smarthost(**XOAUTH2, oauth2={"client_id": "c"}),
            '[delivery.smarthost.oauth2] token_url: required when provider = "generic"',
        ),
        (
            _smarthost(**XOAUTH2, oauth2={**OAUTH, "token_url": "http://login.example/t"}),
            "[delivery.smarthost.oauth2] token_url: 'http://login.example/t' is not an "
            "https:// URL (http:// only to 127.0.0.1)",
        ),
        (
            _smarthost(**XOAUTH2, oauth2={**OAUTH, "grant": "password"}),
            "[delivery.smarthost.oauth2] grant: 'password': input should be",
        ),
        (
            _smarthost(**XOAUTH2, oauth2={**OAUTH, "client_secret_file": ""}),
            "[delivery.smarthost.oauth2] client_secret_file: required when grant = "
            '"client_credentials"',
        ),
        (
            _smarthost(**XOAUTH2, oauth2={**OAUTH, "grant": "refresh_token"}),
            '[delivery.smarthost.oauth2] refresh_token_file: required when grant = "refresh_token"',
        ),
        (
            _smarthost(**XOAUTH2, oauth2={"provider": "google", "grant": "service_account"}),
            "[delivery.smarthost.oauth2] service_account_file: required when grant = "
            '"service_account"',
        ),
        (
            _smarthost(**XOAUTH2, oauth2={"provider": "google", "client_id": "c"}),
            "[delivery.smarthost.oauth2] grant: Google has no client_credentials grant",
        ),
        (
            _smarthost(**XOAUTH2, oauth2={"provider": "microsoft", **OAUTH, "token_url": ""}),
            "[delivery.smarthost.oauth2] tenant: the directory (tenant ID or domain) is "
            "required for client_credentials",
        ),
        (
            _smarthost(**XOAUTH2, oauth2={**OAUTH, "secret": "inline"}),
            "[delivery.smarthost.oauth2] secret: unknown key",
        ),
        (
            {"delivery": {"routes": {"b.example": {"hosts": ["x:587"], "username": "u"}}}},
            '[delivery.routes."b.example"] password_file: required when username is set',
        ),
        (
            {"delivery": {"routes": {"b.example": {"tls": "none"}}}},
            '[delivery.routes."b.example"] hosts: required in a route table',
        ),
        (
            {"delivery": {"routes": {"b.example": {**XOAUTH2, "oauth2": {"client_id": 5}}}}},
            '[delivery.routes."b.example".oauth2] client_id: 5: input should be a valid string',
        ),
        (
            {"delivery": {"routes": {"b.example": 25}}},
            "[delivery.routes] b.example: 25 is not a",
        ),
        (
            _sender_routes({"hosts": ["x:1"]}),
            "[[delivery.sender_routes]] #1 auth_user: exactly one of auth_user, http_token, "
            "sender, sender_domain is required (found 0)",
        ),
        (
            _sender_routes(
                {"auth_user": "a", "hosts": ["x:1"]}, {"auth_user": "b", "sender": "s@x"}
            ),
            "[[delivery.sender_routes]] #2 auth_user: exactly one of",
        ),
        (
            _sender_routes({"auth_user": "a"}),
            "[[delivery.sender_routes]] #1 hosts: required in a sender route",
        ),
        (
            _sender_routes({"auth_user": "a", "hosts": ["x:1"], "rewrite_from": "nobody"}),
            "[[delivery.sender_routes]] #1 rewrite_from: 'nobody' is not a mailbox",
        ),
        (
            _sender_routes({"auth_user": "a", "hosts": ["x:1"], "keep_reply_to": True}),
            "[[delivery.sender_routes]] #1 keep_reply_to: only used with rewrite_from",
        ),
        (
            _sender_routes({"sender_domain": "a b", "hosts": ["x:1"]}),
            "[[delivery.sender_routes]] #1 sender_domain: 'a b' is not a domain name",
        ),
        (
            _sender_routes({**XOAUTH2, "auth_user": "a", "oauth2": {**OAUTH, "bogus": 1}}),
            "[[delivery.sender_routes]] #1 oauth2.bogus: unknown key",
        ),
        (
            _sender_routes({**XOAUTH2, "auth_user": "a", "oauth2": {"client_id": "c"}}),
            '[[delivery.sender_routes]] #1 oauth2.token_url: required when provider = "generic"',
        ),
        (
            _sender_routes(
                {"auth_user": "a", "hosts": ["x:1"]}, {"auth_user": "a", "hosts": ["y:1"]}
            ),
            '[delivery] sender_routes: two sender routes are named "auth_user=a"',
        ),
    ],
)
def test_errors_name_the_table_and_key(raw: dict[str, Any], expected: str) -> None:
    message = _error(raw)
    assert message.startswith(expected), message


def test_plain_and_table_routes_side_by_side() -> None:
    routes = config.parse(
        {
            "delivery": {
                "routes": {
                    "a.example": "mail.a.example:25",
                    "b.example": {**XOAUTH2, "oauth2": OAUTH},
                }
            }
        }
    ).delivery.routes
    assert routes["a.example"] == Endpoint("mail.a.example", 25)
    table = routes["b.example"]
    assert isinstance(table, RouteSettings) and table.tls == "starttls"
    assert table.oauth2 is not None and table.oauth2.grant == "client_credentials"


def test_provider_defaults() -> None:
    microsoft = config.OAuth2Settings(
        provider="microsoft",
        tenant="contoso.onmicrosoft.com",
        client_id="c",
        client_secret_file="/s",
    )
    assert microsoft.effective_token_url == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert microsoft.effective_scope == "https://outlook.office365.com/.default"
    delegated = config.OAuth2Settings(
        provider="microsoft", grant="refresh_token", client_id="c", refresh_token_file="/r"
    )
    assert delegated.effective_scope == "https://outlook.office.com/SMTP.Send offline_access"
    assert delegated.effective_device_url.endswith("/organizations/oauth2/v2.0/devicecode")
    google = config.OAuth2Settings(
        provider="google", grant="service_account", service_account_file="/k.json"
    )
    assert google.effective_token_url == "https://oauth2.googleapis.com/token"
    assert google.effective_scope == "https://mail.google.com/"


def test_effective_configuration_round_trips_with_upstreams() -> None:
    settings = config.parse(
        {
            "delivery": {
                "mode": "smarthost",
                "smarthost": {**XOAUTH2, "oauth2": {**OAUTH, "scope": "s"}},
                "routes": {"a.example": "h:25", "b.example": {"hosts": ["x:587"], "tls": "none"}},
                "sender_routes": [
                    {
                        "auth_user": "scanner",
                        "hosts": ["x:1"],
                        "rewrite_from": "s@x.example",
                        "keep_reply_to": True,
                    },
                    {**XOAUTH2, "http_token": "billing", "name": "billing", "oauth2": OAUTH},
                ],
            }
        }
    )
    text = config.effective(settings)
    assert '[delivery.routes."b.example"]' in text
    assert "[[delivery.sender_routes]]" in text
    assert "[delivery.sender_routes.oauth2]" in text
    assert config.parse(tomllib.loads(text)) == settings


def _keys(model: type[Any], prefix: str = "") -> list[tuple[str, str]]:
    """(dotted name, key) of every key of the schema; tables are walked, not listed."""
    found: list[tuple[str, str]] = []
    for name, info in model.model_fields.items():
        table = config._table_model(info.annotation)
        if table is not None:
            found += _keys(table, f"{prefix}{name}.")
        elif getattr(info.annotation, "__origin__", None) is not dict:
            found.append((prefix + name, name))
    return found


def test_every_key_is_documented_in_the_shipped_config() -> None:
    """STYLE: conf/smtprelay.toml documents every key (commented out, with its default)."""
    text = (Path(__file__).parents[2] / "conf" / "smtprelay.toml").read_text()
    missing = [
        dotted
        for dotted, key in _keys(config.Settings)
        if not re.search(rf"^#?\s*{re.escape(key)}\s*=", text, re.MULTILINE)
    ]
    assert missing == []
