"""TOML configuration -> frozen, typed settings. The one place where defaults live.

Every key of DESIGN.md section 3 that this release implements is declared here with its
default; `conf/smtprelay.toml` documents the same keys. Unknown keys and wrong values
raise :class:`ConfigError` with one line naming the key, e.g.
``[server] timeout: "5x" is not a duration``.
It is one module because it is one schema: each section's dataclass beside its parser,
read top to bottom as the configuration file is.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    model_validator,
)

from smtprelay import defaults
from smtprelay.errors import ConfigError as ConfigError
from smtprelay.units import (
    Endpoint,
    Rate,
    format_duration,
    parse_duration,
    parse_endpoint,
    parse_quota_reset,
    parse_rate,
    parse_size,
)

# In a module of their own so that smtprelay-sendmail can start without pydantic.
DEFAULT_CONFIG_PATH = defaults.DEFAULT_CONFIG_PATH
DEFAULT_LOCAL_SOCKET = defaults.DEFAULT_LOCAL_SOCKET
config_path = defaults.config_path
# sun_path is 108 bytes on Linux, one of them the terminating NUL.
_MAX_SOCKET_PATH = 107

# TOML has real booleans and integers: "yes" is not true and true is not 1.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
EndpointField = Annotated[Endpoint, BeforeValidator(parse_endpoint)]
RateField = Annotated[Rate | None, BeforeValidator(parse_rate)]


def _parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f'{value!r} is not a network string like "192.0.2.0/24"')
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f'{value!r} is not an IP network (CIDR, e.g. "10.0.0.0/8")') from None


def _parse_domain(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in " @\t"):
        raise ValueError(f"{value!r} is not a domain name")
    return value.strip().rstrip(".").lower()


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_parse_network)]
Domain = Annotated[str, BeforeValidator(_parse_domain)]


def _parse_socket_path(value: object) -> str:
    """``""`` (off) or an absolute path short enough for a Unix socket address."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a path string")
    if not value:
        return ""
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path (clients elsewhere connect to it)")
    if len(os.fsencode(value)) > _MAX_SOCKET_PATH:
        raise ValueError(
            f"{value!r} is longer than {_MAX_SOCKET_PATH} bytes, the limit of a Unix socket path"
        )
    return value


def _parse_mode(value: object) -> int:
    """File permissions as an octal string: ``"0666"``, ``"660"``."""
    if isinstance(value, str) and value and len(value) <= 4 and all(c in "01234567" for c in value):
        mode = int(value, 8)
        if mode <= 0o777:
            return mode
    raise ValueError(f'{value!r} is not a file mode like "0666" (octal, at most 0777)')


SocketPath = Annotated[str, BeforeValidator(_parse_socket_path)]
Mode = Annotated[int, BeforeValidator(_parse_mode)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class ServerSettings(_Section):
    hostname: str = Field(default_factory=socket.getfqdn, min_length=1)
    listen: tuple[EndpointField, ...] = (Endpoint("127.0.0.1", 2525),)
    listen_implicit_tls: tuple[EndpointField, ...] = ()
    # Like `listen` (STARTTLS), but TLS 1.0 and 1.1 are accepted too: a listener of its own
    # for old printers and scanners (a warning at start, sessions counted in /metrics).
    legacy_tls_listen: tuple[EndpointField, ...] = ()
    max_message_size: Size = Field(default=25_000_000, gt=0)
    max_recipients: Int = Field(default=defaults.DEFAULT_MAX_RECIPIENTS, gt=0)
    max_connections: Int = Field(default=200, gt=0)
    timeout: Duration = Field(default=300.0, gt=0)
    # SMTP sessions served by this many worker processes beside the main one (which
    # delivers); 0 serves them in the main process.
    workers: Int = Field(default=1, ge=0, le=64)
    # Load balancers (CIDRs) that send a PROXY protocol header (v1 or v2) in front of
    # every connection; empty: no header is expected. When set, every connection must
    # come from one of them and start with a valid header.
    proxy_protocol: tuple[Network, ...] = ()
    # The domain added to addresses without one in local submissions (the local_socket:
    # envelope and From/To/Cc/... headers), as Postfix's myorigin. Empty: hostname.
    origin: Annotated[str, BeforeValidator(lambda v: _parse_domain(v) if v else "")] = ""
    # Local submission (smtprelay-sendmail) on a Unix socket; "" turns it off.
    local_socket: SocketPath = DEFAULT_LOCAL_SOCKET
    local_socket_mode: Mode = 0o666
    # Group of the socket file ("" = the daemon's own); the daemon must be a member.
    local_socket_group: str = ""

    @property
    def origin_domain(self) -> str:
        """``origin``, else ``hostname``: what domainless local addresses get."""
        return self.origin or self.hostname.strip().rstrip(".").lower()


class TLSSettings(_Section):
    # Empty means: generate a self-signed certificate under the spool directory on first run.
    cert_file: str = ""
    key_file: str = ""
    min_version: Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    # How long a client may take to complete a TLS handshake (implicit TLS or STARTTLS);
    # short, so that plaintext clients on the implicit-TLS port and stalled handshakes
    # give their connection slot back quickly.
    handshake_timeout: Duration = Field(default=10.0, gt=0)


class AuthSettings(_Section):
    # Empty means: no SMTP AUTH at all (only trusted networks may relay).
    users_file: str = ""
    allow_plaintext: Bool = False
    # Clients in these networks may AUTH without TLS (old devices); others must use TLS.
    plaintext_networks: tuple[Network, ...] = ()
    # "(Authenticated sender: NAME)" in Received: hands every recipient a login name;
    # off by default, as Postfix's smtpd_sasl_authenticated_header.
    authenticated_header: Bool = False


class RelaySettings(_Section):
    trusted_networks: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    allowed_sender_domains: tuple[Domain, ...] = ()
    allowed_recipient_domains: tuple[Domain, ...] = ()


class SpoolSettings(_Section):
    dir: str = "var/spool"


def _parse_nameserver(value: object) -> Endpoint:
    """A resolver address: an IP, or "ip:port" / "[ipv6]:port"."""
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value.strip())
            return Endpoint(value.strip(), 53)
        except ValueError:
            endpoint = parse_endpoint(value)
            ipaddress.ip_address(endpoint.host)  # name servers are addresses, not names
            return endpoint
    raise ValueError(f'{value!r} is not a name server address like "127.0.0.1:5353"')


# RFC 5322 2.1.1 recommends lines of at most 78 characters: a smaller limit is no use.
MIN_LINE_LENGTH = 78


def _line_length_limit(value: int) -> int:
    if value != 0 and value < MIN_LINE_LENGTH:
        raise ValueError(f"{value} is neither 0 (off) nor at least {MIN_LINE_LENGTH} octets")
    return value


Nameserver = Annotated[Endpoint, BeforeValidator(_parse_nameserver)]
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


def _parse_oauth_url(value: object) -> str:
    """https://, or http:// only to a loopback address (a test's token endpoint)."""
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a URL string")
    if not value:
        return ""
    parts = urlsplit(value.strip())
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost") or (
        parts.hostname or ""
    ).startswith("127.")
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise ValueError(f"{value!r} is not an https:// URL (http:// only to 127.0.0.1)")
    return value.strip()


OAuthURL = Annotated[str, BeforeValidator(_parse_oauth_url)]


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


def _parse_mailbox(value: object) -> str:
    if not isinstance(value, str) or value.count("@") != 1 or any(c in value for c in " <>\t"):
        raise ValueError(f'{value!r} is not a mailbox like "scanner@example.com"')
    local, domain = value.split("@")
    if not local or not domain:
        raise ValueError(f'{value!r} is not a mailbox like "scanner@example.com"')
    return value


Mailbox = Annotated[str, BeforeValidator(_parse_mailbox)]


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


class BounceSettings(_Section):
    enabled: Bool = True
    # From: of DSNs. Empty: "Mail Delivery System <MAILER-DAEMON@[server] hostname>".
    sender: str = ""
    # A delay notice once per message still undelivered after this long; 0 disables.
    delay_warning: Duration = Field(default=4 * 3600.0, ge=0)
    # Where DSNs that cannot be delivered themselves are reported (once). Empty: logged.
    postmaster: str = ""
    # Receives a copy of every failure notice (like Postfix's notify_classes = bounce).
    notify_admin: str = ""
    # Returned messages larger than this are returned as headers only.
    max_return_size: Size = Field(default=100_000, ge=0)


def _parse_http_listen(value: object) -> Endpoint | None:
    """``"host:port"``, or ``""`` for no HTTP endpoint at all."""
    if isinstance(value, str) and not value.strip():
        return None
    return parse_endpoint(value)


class HttpSettings(_Section):
    # Status, metrics and queue operations; "" turns the HTTP endpoint off.
    listen: Annotated[Endpoint | None, BeforeValidator(_parse_http_listen)] = Endpoint(
        "127.0.0.1", 8025
    )
    # Bearer tokens, one per line ('#' comments). Empty: only /healthz answers.
    tokens_file: str = ""
    # How long a finished message's event history stays visible in /messages/{qid}.
    history_retention: Duration = Field(default=3600.0, ge=0)
    # Requests served at once; more wait a moment, then get 503 with Retry-After.
    max_requests: int = Field(default=32, ge=1)
    # A wrong bearer token is answered after 0.5 s, doubling with each recent failure
    # from the same address, up to this; 0: at once (each failure is logged either way).
    bad_token_max_delay: Duration = Field(default=8.0, ge=0)
    # POST /v1/messages/batch: at most this many messages in one request.
    batch_max: int = Field(default=500, ge=1)
    # How long an Idempotency-Key's first response is replayed (a scheduled message's at
    # least until its send time).
    idempotency_retention: Duration = Field(default=86400.0, gt=0)
    # How far ahead send_at may be.
    schedule_horizon: Duration = Field(default=30 * 86400.0, gt=0)


# The Standard Webhooks retry schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
# 14 h, 20 h, 24 h (each with jitter); after the last failure an event is given up.
DEFAULT_WEBHOOK_RETRIES = (
    0.0,
    5.0,
    300.0,
    1800.0,
    7200.0,
    18000.0,
    36000.0,
    50400.0,
    72000.0,
    86400.0,
)


class EventsSettings(_Section):
    # Delivery events (smtprelay.events): kept this long in the event store for
    # GET /v1/events and for webhooks that are behind.
    retention: Duration = Field(default=7 * 86400.0, gt=0)
    # Where the event store (SQLite, WAL) lives; "": <[spool] dir>/events.
    dir: str = ""
    # Delays before each webhook attempt (the first is the initial send).
    webhook_retry_schedule: tuple[Duration, ...] = Field(
        default=DEFAULT_WEBHOOK_RETRIES, min_length=1
    )
    webhook_timeout: Duration = Field(default=10.0, gt=0)
    # Requests in flight to one webhook endpoint at once.
    webhook_concurrency: int = Field(default=4, ge=1, le=64)


def _parse_webhook_url(value: object) -> str:
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a URL string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.strip()


def _parse_event_pattern(value: object) -> str:
    from smtprelay.events.types import valid_pattern

    if not isinstance(value, str) or not valid_pattern(value):
        raise ValueError(f'{value!r} is not an event type or pattern like "recipient.*"')
    return value


class WebhookSettings(_Section):
    url: Annotated[str, BeforeValidator(_parse_webhook_url)]
    # Event types or patterns ("recipient.*"); empty: every event.
    events: tuple[Annotated[str, BeforeValidator(_parse_event_pattern)], ...] = ()
    # The whsec_... secret (several lines: several signatures, for rotation).
    secret_file: str
    # Loopback, link-local and private addresses are refused unless this is true (SSRF).
    allow_private: Bool = False


def _parse_selector(value: object) -> str:
    """A DKIM selector (RFC 6376 3.1): one or more DNS labels of letters, digits, '-'."""
    labels = value.split(".") if isinstance(value, str) else []
    if not labels or not all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        for label in labels
    ):
        raise ValueError(f"{value!r} is not a selector (DNS labels: letters, digits, '-')")
    return str(value).lower()


class DkimKeySettings(_Section):
    # Mail whose From: domain is this domain is signed with this key.
    domain: Domain
    # Published as SELECTOR._domainkey.DOMAIN; a new selector per key rotation.
    selector: Annotated[str, BeforeValidator(_parse_selector)]
    # PEM private key, RSA (at least 1024 bits; 2048 recommended) or Ed25519.
    key_file: Annotated[str, Field(min_length=1)]


class DkimSettings(_Section):
    keys: tuple[DkimKeySettings, ...] = ()


class LogSettings(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings = AuthSettings()
    relay: RelaySettings = RelaySettings()
    spool: SpoolSettings = SpoolSettings()
    delivery: DeliverySettings = DeliverySettings()
    bounce: BounceSettings = BounceSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    events: EventsSettings = EventsSettings()
    webhooks: tuple[WebhookSettings, ...] = ()
    dkim: DkimSettings = DkimSettings()


def load(path: Path) -> Settings:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(raw)


def parse(raw: dict[str, Any]) -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def _table_model(annotation: object) -> type[BaseModel] | None:
    """The model of a table-valued field (``X`` or ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _sections(model: type[BaseModel] | None = None, prefix: str = "") -> set[str]:
    """Dotted names of every table: "server", "delivery", "delivery.smarthost", ..."""
    names: set[str] = set()
    for name, info in (model or Settings).model_fields.items():
        annotation = info.annotation
        table = _table_model(annotation)
        if table is not None and getattr(annotation, "__origin__", None) is not tuple:
            names.add(prefix + name)
            names |= _sections(table, f"{prefix}{name}.")
        elif prefix and getattr(annotation, "__origin__", None) is dict:
            names.add(prefix + name)
    return names


# Arrays of tables ([[webhooks]], [[dkim.keys]]): an error names the entry by number.
_ARRAYS = ("webhooks", "delivery.sender_routes", "dkim.keys")


def _describe(error: ValidationError) -> str:
    """One line naming the table and key: ``[delivery.smarthost] hosts: required ...``."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    if loc[:2] == ["delivery", "routes"] and len(loc) >= 4:
        tag = loc.pop(3)  # the union member: a route is a "plain" string or a "table"
        if tag == "table":  # [delivery.routes."example.com"] is a table of its own
            loc[:3] = ["delivery", f'routes."{loc[2]}"']
    for array in _ARRAYS:
        parts = array.split(".")
        if loc[: len(parts)] != parts:
            continue
        entry = loc[len(parts) :]
        if not entry or not entry[0].isdigit():
            return f"[[{array}]]: {message}"
        problem = "unknown key" if first["type"] == "extra_forbidden" else message
        key, sep, text = problem.partition(": ")
        if (len(entry) == 1 or entry[-1] == "oauth2") and sep and " " not in key:
            entry, problem = [*entry, key], text  # a whole-table check names its key
        if len(entry) < 2:
            return f"[[{array}]] #{int(entry[0]) + 1}: {problem}"
        return f"[[{array}]] #{int(entry[0]) + 1} {'.'.join(entry[1:])}: {problem}"
    known = _sections()
    if loc[1:2] and loc[1].startswith("routes."):
        known |= {f"delivery.{loc[1]}", f"delivery.{loc[1]}.oauth2"}
    key_in_message, sep, rest = message.partition(": ")
    deepest = len(loc)
    if ".".join(loc) in known and sep and " " not in key_in_message:
        loc += key_in_message.split(".")  # a whole-table check names the key it is about
        message = rest
        deepest = len(loc) - 1  # the key named, even a table's ("oauth2: required")
    depth = max((n for n in range(1, deepest + 1) if ".".join(loc[:n]) in known), default=0)
    if depth == 0:
        return f"[{loc[0]}]: unknown section"
    table, keys = ".".join(loc[:depth]), loc[depth:]
    if table in _TABLES_OF_TABLES and len(keys) > 1:  # [delivery.domain_limits."gmail.com"]
        table, keys = f"{table}.{_toml_string(keys[0])}", keys[1:]
    where = f"[{table}]" + (" " + keys[0] + "".join(f"[{k}]" for k in keys[1:]) if keys else "")
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if first["type"].endswith("_type") or first["type"] in ("literal_error", "greater_than"):
        message = f"{first['input']!r}: {message[0].lower()}{message[1:]}"
    extra = len(error.errors()) - 1
    suffix = f" (and {extra} more error{'s' if extra > 1 else ''})" if extra else ""
    return f"{where}: {message}{suffix}"


# Tables whose keys name tables of their own.
_TABLES_OF_TABLES = {"delivery.domain_limits"}

_DURATION_KEYS = {
    "server.timeout",
    "tls.handshake_timeout",
    "bounce.delay_warning",
    "delivery.retry_schedule",
    "delivery.max_queue_lifetime",
    "delivery.connect_timeout",
    "delivery.command_timeout",
    "delivery.data_timeout",
    "delivery.slowdown_backoff",
    "http.history_retention",
    "http.bad_token_max_delay",
    "events.retention",
    "events.webhook_retry_schedule",
    "events.webhook_timeout",
}


def effective(settings: Settings) -> str:
    """The effective configuration as TOML, every key shown (for ``check-config``)."""
    lines: list[str] = []
    _render(settings, "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _render(model: BaseModel, table: str, lines: list[str], header: str = "") -> None:
    """``header``: how the table is opened (``[[name]]`` for an entry of an array)."""
    nested: list[tuple[str, BaseModel | dict[str, Any], str]] = []
    if table:
        lines += ["", header or f"[{table}]"]
    for key, value in model:
        name = f"{table}.{key}" if table else key
        if value is None and _table_model(type(model).model_fields[key].annotation):
            continue  # an optional table that is not there (oauth2)
        if isinstance(value, BaseModel | dict):
            nested.append((name, value, ""))
        elif isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
            for item in value:  # an array of tables ([[webhooks]])
                nested.append((name, item, f"[[{name}]]"))
        else:
            lines.append(f"{key} = {_toml_value(name, value)}")
    for name, value, opened in nested:
        if isinstance(value, BaseModel):
            _render(value, name, lines, opened)
            continue
        lines += ["", f"[{name}]"]
        tables = {k: v for k, v in value.items() if isinstance(v, BaseModel)}
        lines += [
            f"{_toml_string(k)} = {_toml_value(name, v)}"
            for k, v in value.items()
            if k not in tables
        ]
        for k, v in tables.items():  # a route written as a table
            _render(v, f"{name}.{_toml_string(k)}", lines)


def _toml_value(name: str, value: object) -> str:
    if name == "server.local_socket_mode" and isinstance(value, int):
        return _toml_string(f"{value:04o}")
    if name in _DURATION_KEYS:
        if isinstance(value, tuple):
            return "[" + ", ".join(_toml_string(format_duration(v)) for v in value) + "]"
        if isinstance(value, float):
            return _toml_string(format_duration(value))
    if value is None:
        return '""'
    if isinstance(value, Rate):
        return _toml_string(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, tuple) and not isinstance(value, Endpoint):
        return "[" + ", ".join(_toml_string(str(v)) for v in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    """A TOML basic string: escapes what TOML forbids raw (controls, DEL), keeps UTF-8."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)
