"""The other sections of the configuration file, and :class:`Settings`, the whole of it,
in the order of the file (DESIGN.md section 3; ``conf/smtprelay.toml`` documents each key)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from smtprelay import defaults
from smtprelay.config.fields import (
    DEFAULT_LOCAL_SOCKET,
    Bool,
    Domain,
    Duration,
    EndpointField,
    Int,
    Mode,
    Network,
    Size,
    SocketPath,
    _parse_domain,
    _parse_event_pattern,
    _parse_http_listen,
    _parse_selector,
    _parse_webhook_url,
    _Section,
)
from smtprelay.config.upstream import DeliverySettings
from smtprelay.units import Endpoint


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
    # Processes that validate, build and write JSON submissions (smtprelay.web.preparing);
    # 0: the main process does it between deliveries.
    prepare_workers: Int = Field(default=1, ge=0, le=64)
    # Processes that accept on `listen` and serve the common JSON submission themselves
    # (smtprelay.web.front), handing every other request to the main process; 0: the
    # main process accepts and serves everything.
    workers: Int = Field(default=1, ge=0, le=16)


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


class WebhookSettings(_Section):
    url: Annotated[str, BeforeValidator(_parse_webhook_url)]
    # Event types or patterns ("recipient.*"); empty: every event.
    events: tuple[Annotated[str, BeforeValidator(_parse_event_pattern)], ...] = ()
    # The whsec_... secret (several lines: several signatures, for rotation).
    secret_file: str
    # Loopback, link-local and private addresses are refused unless this is true (SSRF).
    allow_private: Bool = False


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
