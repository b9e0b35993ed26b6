"""The upstreams of ``[delivery]``: rate limits, OAuth 2.0, the smarthost, the routes
per recipient domain and per sender, and the ``[delivery]`` table that holds them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag, model_validator

from smtprelay.config.fields import (
    Bool,
    Domain,
    Duration,
    EndpointField,
    Int,
    Nameserver,
    OAuthURL,
    RateField,
    _line_length_limit,
    _parse_domain,
    _parse_mailbox,
    _Section,
)
from smtprelay.units import Endpoint, parse_endpoint, parse_quota_reset

DEFAULT_RETRY_SCHEDULE = (300.0, 600.0, 1200.0, 2400.0, 4200.0)
# How long an upstream is paused after each "slow down" reply in a row (the last repeats).
DEFAULT_SLOWDOWN_BACKOFF = (30.0, 60.0, 120.0, 300.0, 600.0)


class UpstreamLimits(_Section):
    """Rate limits of one upstream (a smarthost, a route, a sender route) or of one
    destination domain (``[delivery.domain_limits."gmail.com"]``); see
    delivery/ratelimits.py. Limits shape: mail over them waits in the queue, never fails."""

    # Transactions per second/minute/hour ("10/s", "30/min", "1000/h"); "": no limit.
    max_rate: RateField = None
    # Transactions per day (0: no limit), counted from quota_reset.
    daily_quota: Int = Field(default=0, ge=0)
    # "HH:MM UTC": the count starts again at that time each day; "rolling": any 24 h.
    quota_reset: Annotated[str, BeforeValidator(parse_quota_reset)] = "00:00 UTC"
    # Connections open to it at once; 0: [delivery] per_destination_concurrency.
    max_connections: Int = Field(default=0, ge=0)
    # More recipients than this go in several transactions; 0: no limit.
    max_recipients_per_message: Int = Field(default=0, ge=0)

    @property
    def limited(self) -> bool:
        """Any limit besides max_connections: its messages pass the rate-limit gate."""
        return self.max_rate is not None or self.daily_quota > 0


_OAUTH2_TOKEN_URLS = {
    "microsoft": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
    "google": "https://oauth2.googleapis.com/token",
}
_OAUTH2_DEVICE_URLS = {
    "microsoft": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
    "google": "https://oauth2.googleapis.com/device/code",
}
_OAUTH2_SCOPES = {
    ("microsoft", "client_credentials"): "https://outlook.office365.com/.default",
    ("microsoft", "refresh_token"): "https://outlook.office.com/SMTP.Send offline_access",
    ("google", "refresh_token"): "https://mail.google.com/",
    ("google", "service_account"): "https://mail.google.com/",
}


class OAuth2Settings(_Section):
    """How the relay gets access tokens for an upstream with ``auth = "xoauth2"``."""

    provider: Literal["microsoft", "google", "generic"] = "generic"
    # Microsoft Entra directory (tenant ID or domain) for the default URLs.
    tenant: str = "organizations"
    # "": the provider's (generic: required).
    token_url: OAuthURL = ""
    # For `smtprelay oauth login` (RFC 8628 device authorization); "": the provider's.
    device_authorization_url: OAuthURL = ""
    client_id: str = ""
    client_secret_file: str = ""
    # "": the provider's default for the grant.
    scope: str = ""
    grant: Literal["client_credentials", "refresh_token", "service_account"] = "client_credentials"
    refresh_token_file: str = ""
    service_account_file: str = ""

    @model_validator(mode="after")
    def _complete(self) -> OAuth2Settings:
        if self.provider == "generic" and not self.token_url:
            raise ValueError('token_url: required when provider = "generic"')
        if self.provider == "google" and self.grant == "client_credentials":
            raise ValueError(
                'grant: Google has no client_credentials grant for mail; use "refresh_token" '
                'or "service_account"'
            )
        if self.provider == "microsoft" and self.grant == "service_account":
            raise ValueError(
                'grant: "service_account" is Google\'s; Microsoft uses '
                '"client_credentials" or "refresh_token"'
            )
        if (
            self.provider == "microsoft"
            and self.grant == "client_credentials"
            and not self.token_url
            and self.tenant in ("organizations", "common", "consumers")
        ):
            raise ValueError(
                "tenant: the directory (tenant ID or domain) is required for client_credentials"
            )
        if self.grant == "service_account":
            if not self.service_account_file:
                raise ValueError('service_account_file: required when grant = "service_account"')
            return self
        if not self.client_id:
            raise ValueError(f'client_id: required when grant = "{self.grant}"')
        if self.grant == "client_credentials" and not self.client_secret_file:
            raise ValueError('client_secret_file: required when grant = "client_credentials"')
        if self.grant == "refresh_token" and not self.refresh_token_file:
            raise ValueError('refresh_token_file: required when grant = "refresh_token"')
        return self

    @property
    def effective_token_url(self) -> str:
        return self.token_url or _OAUTH2_TOKEN_URLS[self.provider].format(tenant=self.tenant)

    @property
    def effective_device_url(self) -> str:
        if self.device_authorization_url or self.provider == "generic":
            return self.device_authorization_url
        return _OAUTH2_DEVICE_URLS[self.provider].format(tenant=self.tenant)

    @property
    def effective_scope(self) -> str:
        return self.scope or _OAUTH2_SCOPES.get((self.provider, self.grant), "")


class SmarthostSettings(UpstreamLimits):
    """One upstream: the smarthost, and (subclassed below) a route table or a sender
    route. Whatever an upstream can have is declared here, once."""

    hosts: tuple[EndpointField, ...] = ()
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    username: str = ""
    password_file: str = ""
    # "password": AUTH PLAIN/LOGIN with username + password_file; "xoauth2": an OAuth 2.0
    # access token for the mailbox ``username`` (AUTH XOAUTH2, or OAUTHBEARER).
    auth: Literal["password", "xoauth2"] = "password"
    oauth2: OAuth2Settings | None = None

    @model_validator(mode="after")
    def _credentials_together(self) -> SmarthostSettings:
        if self.auth == "xoauth2":
            if not self.username:
                raise ValueError('username: required when auth = "xoauth2" (the mailbox)')
            if self.oauth2 is None:
                raise ValueError('oauth2: a table is required when auth = "xoauth2"')
            if self.password_file:
                raise ValueError('password_file: not used when auth = "xoauth2"')
            return self
        if self.oauth2 is not None:
            raise ValueError('oauth2: only used with auth = "xoauth2"')
        if self.username and not self.password_file:
            raise ValueError("password_file: required when username is set")
        return self


class RouteSettings(SmarthostSettings):
    """A ``[delivery.routes]`` entry written as a table: a whole upstream for one
    recipient domain (the plain "host:port" string stays an Endpoint)."""

    @model_validator(mode="after")
    def _route_needs_hosts(self) -> RouteSettings:
        if not self.hosts:
            raise ValueError("hosts: required in a route table")
        return self


_SENDER_MATCHERS = ("auth_user", "http_token", "sender", "sender_domain")


class SenderRouteSettings(SmarthostSettings):
    """A ``[[delivery.sender_routes]]`` entry: one matcher, then an upstream."""

    # Shown in logs and named by `smtprelay oauth test|login`; "": "MATCHER=VALUE".
    name: str = ""
    auth_user: str = ""
    http_token: str = ""
    sender: str = ""
    sender_domain: Annotated[str, BeforeValidator(lambda v: _parse_domain(v) if v else "")] = ""
    # The envelope sender and the From: header become this mailbox.
    rewrite_from: Annotated[str, BeforeValidator(lambda v: _parse_mailbox(v) if v else "")] = ""
    # With rewrite_from: the original From: goes to a Reply-To: (unless there is one).
    keep_reply_to: Bool = False

    @model_validator(mode="after")
    def _one_matcher(self) -> SenderRouteSettings:
        given = [m for m in _SENDER_MATCHERS if getattr(self, m)]
        if len(given) != 1:
            raise ValueError(
                "auth_user: exactly one of auth_user, http_token, sender, sender_domain "
                f"is required (found {len(given)})"
            )
        if not self.hosts:
            raise ValueError("hosts: required in a sender route")
        if self.keep_reply_to and not self.rewrite_from:
            raise ValueError("keep_reply_to: only used with rewrite_from")
        return self

    @property
    def matcher(self) -> tuple[str, str]:
        """(key, value) of the one matcher given."""
        key = next(m for m in _SENDER_MATCHERS if getattr(self, m))
        return key, str(getattr(self, key))

    @property
    def label(self) -> str:
        key, value = self.matcher
        return self.name or f"{key}={value}"


def _route_tag(value: object) -> str:
    return "table" if isinstance(value, dict | RouteSettings) else "plain"


# A plain "host:port" keeps today's meaning (the [delivery] tls policy, no AUTH).
RouteEntry = Annotated[
    Annotated[Endpoint, BeforeValidator(parse_endpoint), Tag("plain")]
    | Annotated[RouteSettings, Tag("table")],
    Discriminator(_route_tag),
]


class DeliverySettings(_Section):
    mode: Literal["mx", "smarthost"] = "mx"
    port: Int = Field(default=25, gt=0, lt=65536)
    nameservers: tuple[Nameserver, ...] = ()
    tls: Literal["opportunistic", "required", "verify", "none"] = "opportunistic"
    ca_file: str = ""
    concurrency: Int = Field(default=100, gt=0)
    per_destination_concurrency: Int = Field(default=20, gt=0)
    retry_schedule: tuple[Duration, ...] = Field(default=DEFAULT_RETRY_SCHEDULE, min_length=1)
    max_queue_lifetime: Duration = Field(default=5 * 86400.0, gt=0)
    # RFC 5321 4.5.3.2: connect, each command, and the wait after the final dot.
    connect_timeout: Duration = Field(default=30.0, gt=0)
    command_timeout: Duration = Field(default=300.0, gt=0)
    data_timeout: Duration = Field(default=600.0, gt=0)
    # Lines longer than this (octets, without CRLF) are folded on output, as Postfix's
    # smtp_line_length_limit; 0 sends them as they are.
    line_length_limit: Annotated[Int, AfterValidator(_line_length_limit)] = 998
    smarthost: SmarthostSettings = SmarthostSettings()
    # Per recipient domain: "host:port", or a table with the keys of an upstream.
    routes: dict[Domain, RouteEntry] = Field(default_factory=dict)
    # Per sender, SMTP user or HTTP token: first match wins (after routes).
    sender_routes: tuple[SenderRouteSettings, ...] = ()
    # Provider rate limits (delivery/ratelimits.py): per destination domain in MX delivery,
    # and the pauses of an upstream that answered "slow down" (delivery/slowdown.py).
    domain_limits: dict[Domain, UpstreamLimits] = Field(default_factory=dict)
    slowdown_backoff: tuple[Duration, ...] = Field(default=DEFAULT_SLOWDOWN_BACKOFF, min_length=1)

    @model_validator(mode="after")
    def _smarthost_needs_hosts(self) -> DeliverySettings:
        if self.mode == "smarthost" and not self.smarthost.hosts:
            raise ValueError('smarthost.hosts: required when mode = "smarthost"')
        labels = [r.label for r in self.sender_routes]
        for label in labels:
            if labels.count(label) > 1:
                raise ValueError(f'sender_routes: two sender routes are named "{label}"')
        return self
