"""TokenSource against a real token endpoint on loopback, with the clock in the test's hand:
tokens are cached, renewed before they expire (not after), one request serves deliveries
that ask at once, failures are DeliveryErrors with a 4xx reply naming the route, and the
three grants (client credentials, refresh token with rotation, Google's JWT bearer) work."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from smtprelay import config
from smtprelay.config import OAuth2Settings
from smtprelay.delivery.errors import DeliveryError
from smtprelay.delivery.oauth import TokenSource
from smtprelay.delivery.resolver import Resolver
from smtprelay.delivery.routes import Router
from tests.integration.oauth_server import JWT_BEARER, TokenServer

MAILBOX = "scanner@company.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[TokenServer]:
    server = TokenServer(app_mailboxes={MAILBOX}).start()
    yield server
    server.stop()


def _secret(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


def _client_credentials(server: TokenServer, tmp_path: Path) -> OAuth2Settings:
    return OAuth2Settings(
        token_url=server.url,
        client_id=server.client_id,
        client_secret_file=_secret(tmp_path, "secret", server.client_secret),
        scope="https://outlook.office365.com/.default",
    )


def test_cached_then_renewed_before_expiry(server: TokenServer, tmp_path: Path) -> None:
    clock = Clock()
    source = TokenSource(
        "smarthost",
        "[delivery.smarthost]",
        _client_credentials(server, tmp_path),
        MAILBOX,
        clock=clock,
    )

    async def run() -> list[str]:
        tokens = [await source.token()]
        clock.now += 3000  # 600 s of the hour left: still cached
        tokens.append(await source.token())
        assert server.count("client_credentials") == 1
        clock.now += 301  # 299 s left, under the 300 s margin: renewed before it expires
        tokens.append(await source.token())
        return tokens

    first, cached, renewed = asyncio.run(run())
    assert first == cached != renewed
    assert server.count("client_credentials") == 2
    assert server.validate(renewed, MAILBOX)


def test_deliveries_asking_at_once_share_one_request(server: TokenServer, tmp_path: Path) -> None:
    source = TokenSource(
        "smarthost", "[delivery.smarthost]", _client_credentials(server, tmp_path), MAILBOX
    )

    async def run() -> set[str]:
        return set(await asyncio.gather(*(source.token() for _ in range(20))))

    assert len(asyncio.run(run())) == 1
    assert server.count("client_credentials") == 1


def test_failures_are_temporary_and_name_the_route(
    server: TokenServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _client_credentials(server, tmp_path)
    Path(settings.client_secret_file).write_text("wrong secret\n")
    source = TokenSource("sender route auth_user=scanner", "[x]", settings, MAILBOX)
    with pytest.raises(DeliveryError) as refused:
        asyncio.run(source.token())
    assert refused.value.reply.code == 451
    assert "sender route auth_user=scanner: invalid_client" in refused.value.reply.text
    assert "AADSTS7000215" in caplog.text and "sender route auth_user=scanner" in caplog.text
    server.down()
    source = TokenSource("smarthost", "[x]", _client_credentials(server, tmp_path), MAILBOX)
    with pytest.raises(DeliveryError) as down:
        asyncio.run(source.token())
    assert (down.value.reply.code, down.value.reply.enhanced) == (451, "4.7.0")
    assert "ConnectError" in down.value.reply.text


def test_refresh_token_rotated_is_kept_0600(server: TokenServer, tmp_path: Path) -> None:
    server.rotate_refresh_tokens = True
    first = server.issue_refresh_token(MAILBOX)
    path = _secret(tmp_path, "refresh", first)
    settings = OAuth2Settings(
        token_url=server.url,
        client_id=server.client_id,
        grant="refresh_token",
        refresh_token_file=path,
    )
    source = TokenSource("smarthost", "[x]", settings, MAILBOX)
    token = asyncio.run(source.token())
    assert server.validate(token, MAILBOX)
    kept = Path(path).read_text().strip()
    assert kept != first and kept in server.refresh_tokens
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_service_account_jwt_bearer(server: TokenServer, tmp_path: Path) -> None:
    account_key = RSAKey.generate_key(2048)
    email = "relay@project.iam.gserviceaccount.test"
    server.service_accounts[email] = account_key
    key_file = tmp_path / "account.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": email,
                "private_key": account_key.as_pem(private=True).decode(),
                "private_key_id": "k1",
                "token_uri": server.url,
            }
        )
    )
    settings = OAuth2Settings(
        provider="google",
        token_url=server.url,
        grant="service_account",
        service_account_file=str(key_file),
    )
    source = TokenSource("smarthost", "[x]", settings, MAILBOX)
    token = asyncio.run(source.token())
    assert server.count(JWT_BEARER) == 1
    assert server.validate(token, MAILBOX)  # issued for the mailbox it acts for (sub)
    assert not server.validate(token, "someone-else@company.test")


def test_reload_keeps_the_token_unless_the_secret_changed(
    server: TokenServer, tmp_path: Path
) -> None:
    oauth2 = _client_credentials(server, tmp_path)
    settings = config.parse(
        {
            "delivery": {
                "mode": "smarthost",
                "smarthost": {
                    "hosts": ["127.0.0.1:9"],
                    "auth": "xoauth2",
                    "username": MAILBOX,
                    "oauth2": oauth2.model_dump(),
                },
            }
        }
    ).delivery
    resolver = Resolver((), port=25, own_names=(), own_endpoints=())

    def source(router: Router) -> TokenSource:
        assert router.smarthost is not None and router.smarthost.credentials is not None
        assert router.smarthost.credentials.oauth is not None
        return router.smarthost.credentials.oauth

    def rewrite(secret: str) -> None:
        Path(oauth2.client_secret_file).write_text(secret + "\n")

    async def run() -> None:
        router = Router(settings, resolver)
        first = await source(router).token()
        same = router.reloaded(settings)  # SIGHUP, nothing changed
        assert await source(same).token() == first
        assert server.count("client_credentials") == 1
        rewrite(server.client_secret)  # rewritten, the same text
        assert await source(same.reloaded(settings)).token() == first
        rewrite("a new secret")
        server.client_secret = "a new secret"
        changed = same.reloaded(settings)  # the file changed: a new token, with it
        assert await source(changed).token() != first
        assert server.count("client_credentials") == 2

    asyncio.run(run())
