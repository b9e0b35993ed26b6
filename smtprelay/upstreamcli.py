"""``smtprelay route`` and ``smtprelay oauth test|login``: the upstreams, from the shell.

``route --user scanner --from a@b [--to rcpt] [--token NAME]`` prints which upstream a
message would leave through, by the same precedence as the daemon (routes.py): a route
of the recipient domain, then the first sender route that matches, then the smarthost,
else MX. ``oauth test ROUTE`` gets a token and authenticates to every host of an
upstream without sending mail; ``oauth login ROUTE`` runs the device-code flow and
stores the refresh token. ROUTE is ``smarthost``, a ``[delivery.routes]`` domain written
as a table, or a sender route's name (``name``, else ``MATCHER=VALUE``, e.g.
``auth_user=scanner``). No daemon is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from smtprelay.addresses import domain_of
from smtprelay.cliactions import Actions
from smtprelay.config import Settings, SmarthostSettings
from smtprelay.envelope import Client, Envelope, Recipient, Submission, SubmittedVia
from smtprelay.errors import RelayError
from smtprelay.units import Endpoint

EXIT_OK, EXIT_FAILED = 0, 1


class UpstreamCommandError(RelayError):
    """The route named does not exist or cannot do what was asked (exit 1)."""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    route = commands.add_parser(
        "route",
        parents=[common],
        help="which upstream a sender, SMTP user or HTTP token would take",
    )
    route.add_argument("--user", metavar="NAME", help="the SMTP AUTH user that submits")
    route.add_argument("--token", metavar="NAME", help="the HTTP API token that submits")
    route.add_argument("--from", dest="sender", metavar="ADDRESS", default="", help="sender")
    route.add_argument("--to", metavar="ADDRESS", help="a recipient (its domain may have a route)")
    route.set_defaults(handler=cmd_route)
    oauth = Actions(commands, common, "oauth", "OAuth2 upstreams: test a route, or sign in (login)")
    test = oauth.add("test", "get a token and EHLO+AUTH to the upstream, no mail", cmd_oauth_test)
    test.add_argument("route", metavar="ROUTE")
    login = oauth.add("login", "device-code sign-in; stores the refresh token", cmd_oauth_login)
    login.add_argument("route", metavar="ROUTE")


# --- route ---------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    from smtprelay.delivery.routes import first_match

    delivery = settings.delivery
    envelope = Envelope(
        qid="NOQUEUE",
        sender=args.sender,
        recipients=[Recipient(args.to or "postmaster@invalid")],
        client=Client("", 0, "", auth_user=args.user),
        arrival=0.0,
        size=0,
        submission=Submission(
            via=SubmittedVia.HTTP if args.token else SubmittedVia.SMTP, token=args.token
        ),
    )
    who = [f"from=<{args.sender}>"]
    who += [f"user={args.user}"] if args.user else []
    who += [f"token={args.token}"] if args.token else []
    who += [f"to=<{args.to}>"] if args.to else []
    print(" ".join(who))
    domain = domain_of(args.to) if args.to else ""
    fixed = delivery.routes.get(domain) if domain else None
    index = first_match(delivery.sender_routes, envelope)
    if fixed is not None:
        print(f'route: [delivery.routes] "{domain}"')
        _print_upstream(fixed)
    elif index is not None:
        chosen = delivery.sender_routes[index]
        print(f"route: sender route {chosen.label} ([[delivery.sender_routes]] #{index + 1})")
        _print_upstream(chosen)
        if chosen.rewrite_from:
            kept = " (the original From: kept in Reply-To:)" if chosen.keep_reply_to else ""
            print(f"rewrite_from: {chosen.rewrite_from}{kept}")
    elif delivery.mode == "smarthost":
        print("route: default, the smarthost")
        _print_upstream(delivery.smarthost)
    else:
        print("route: default, MX delivery (each recipient domain's mail exchangers)")
    if not args.to and delivery.routes:
        print(
            f"note: recipient domains of [delivery.routes] go their own way first: "
            f"{', '.join(sorted(delivery.routes))}"
        )
    return EXIT_OK


def _print_upstream(upstream: SmarthostSettings | Endpoint) -> None:
    if isinstance(upstream, Endpoint):
        print(f"upstream: {upstream} (tls as [delivery] tls, no AUTH)")
        return
    hosts = ", ".join(str(h) for h in upstream.hosts)
    if upstream.auth == "xoauth2" and upstream.oauth2 is not None:
        oauth = upstream.oauth2
        auth = (
            f"AUTH XOAUTH2 as {upstream.username}; tokens: {oauth.provider}, "
            f"grant {oauth.grant}, {oauth.effective_token_url}"
        )
    elif upstream.username:
        auth = f"AUTH as {upstream.username}"
    else:
        auth = "no AUTH"
    print(f"upstream: {hosts} (tls {upstream.tls}, {auth})")


# --- oauth ---------------------------------------------------------------------------


def _find(settings: Settings, name: str) -> tuple[SmarthostSettings, str, str]:
    """(upstream, its name in logs, where its keys are) for ROUTE ``name``."""
    delivery = settings.delivery
    if name == "smarthost" and delivery.smarthost.hosts:
        return delivery.smarthost, "smarthost", "[delivery.smarthost]"
    entry = delivery.routes.get(name.strip('"').rstrip(".").lower())
    if isinstance(entry, SmarthostSettings):
        domain = name.strip('"').rstrip(".").lower()
        return entry, f'route "{domain}"', f'[delivery.routes."{domain}"]'
    for number, sender_route in enumerate(delivery.sender_routes, 1):
        if sender_route.label == name:
            return (
                sender_route,
                f"sender route {sender_route.label}",
                f"[[delivery.sender_routes]] #{number}",
            )
    known = _oauth_routes(settings)
    raise UpstreamCommandError(
        f"no upstream named {name!r}; with OAuth2: {', '.join(known) if known else 'none'}"
    )


def _oauth_routes(settings: Settings) -> list[str]:
    delivery = settings.delivery
    names = ["smarthost"] if delivery.smarthost.auth == "xoauth2" else []
    names += [
        d
        for d, e in delivery.routes.items()
        if isinstance(e, SmarthostSettings) and e.auth == "xoauth2"
    ]
    names += [s.label for s in delivery.sender_routes if s.auth == "xoauth2"]
    return names


def _oauth_upstream(settings: Settings, name: str) -> tuple[SmarthostSettings, str, str]:
    upstream, label, where = _find(settings, name)
    if upstream.auth != "xoauth2" or upstream.oauth2 is None:
        raise UpstreamCommandError(f'{where} auth: is "{upstream.auth}", not "xoauth2"')
    return upstream, label, where


def cmd_oauth_test(args: argparse.Namespace, settings: Settings) -> int:
    from smtprelay.delivery.errors import DeliveryError
    from smtprelay.delivery.probe import probe, token_check
    from smtprelay.delivery.resolver import Resolver
    from smtprelay.delivery.routes import upstream_route
    from smtprelay.delivery.session import Opener, Timeouts

    upstream, label, where = _oauth_upstream(settings, args.route)
    delivery = settings.delivery
    route = upstream_route(upstream, label, where, timeout=delivery.connect_timeout)
    resolver = Resolver(delivery.nameservers, port=delivery.port, own_names=(), own_endpoints=())
    opener = Opener(
        settings.server.hostname,
        delivery.ca_file,
        Timeouts(delivery.connect_timeout, delivery.command_timeout, delivery.data_timeout),
    )

    async def run() -> int:
        try:
            print(await token_check(route))
        except DeliveryError as e:
            print(f"token: {e.reply}", file=sys.stderr)
            return EXIT_FAILED
        results = await probe(route, resolver, opener)
        for result in results:
            print(f"{result.host}: {result.detail}", file=sys.stdout if result.ok else sys.stderr)
        return EXIT_OK if results and all(r.ok for r in results) else EXIT_FAILED

    return asyncio.run(run())


def cmd_oauth_login(args: argparse.Namespace, settings: Settings) -> int:
    from smtprelay.delivery.devicecode import LoginFailed, login

    upstream, _, where = _oauth_upstream(settings, args.route)
    oauth = upstream.oauth2
    assert oauth is not None
    if oauth.grant != "refresh_token":
        raise UpstreamCommandError(
            f'{where} oauth2.grant: is "{oauth.grant}"; login is for "refresh_token"'
        )

    def show(text: str) -> None:
        print(text, flush=True)

    try:
        asyncio.run(login(oauth, show, http_timeout=settings.delivery.connect_timeout))
    except LoginFailed as e:
        print(f"smtprelay: login failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"refresh token stored in {oauth.refresh_token_file} (mode 0600)")
    return EXIT_OK
