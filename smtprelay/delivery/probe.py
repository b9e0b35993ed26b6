"""``smtprelay oauth test ROUTE``: get a token and authenticate to an upstream, no mail.

The same code as a delivery (``session.Opener``: connect, EHLO, the route's TLS, AUTH
with the route's credentials), stopped before MAIL FROM; one line per host, so that an
operator sees at once whether the token endpoint, the TLS or the mailbox is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtprelay.delivery.errors import DeliveryError
from smtprelay.delivery.resolver import Resolver
from smtprelay.delivery.routes import Route
from smtprelay.delivery.session import Opener


@dataclass(frozen=True, slots=True)
class Probe:
    host: str  # "name[ip]:port", or the configured "host:port" when it did not resolve
    ok: bool
    detail: str


async def token_check(route: Route) -> str:
    """A fresh access token's description; raises DeliveryError (the OAuth error)."""
    assert route.credentials is not None and route.credentials.oauth is not None
    source = route.credentials.oauth
    token = await source.token()
    url = source.settings.effective_token_url
    return f"token: for {source.mailbox} from {url} ({len(token)} characters)"


async def probe(route: Route, resolver: Resolver, opener: Opener) -> list[Probe]:
    """EHLO + TLS + AUTH against every host of ``route``, then QUIT."""
    results: list[Probe] = []
    for endpoint in route.fixed:
        try:
            hops = await resolver.host_hops(endpoint)
        except DeliveryError as e:
            results.append(Probe(str(endpoint), False, str(e.reply)))
            continue
        for hop in hops:
            try:
                conn = await opener.open(route, hop, ("probe",))
            except DeliveryError as e:
                results.append(Probe(str(hop), False, str(e.reply)))
                continue
            user = route.credentials.username if route.credentials else None
            results.append(Probe(str(hop), True, f"authenticated as {user}" if user else "ready"))
            try:
                await conn.client.quit()
            except Exception:  # the answer to QUIT changes nothing here
                conn.client.close()
    return results
