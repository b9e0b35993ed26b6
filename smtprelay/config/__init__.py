"""TOML configuration -> frozen, typed settings. The one place where defaults live.

Every key of DESIGN.md section 3 that this release implements is declared here with its
default; `conf/smtprelay.toml` documents the same keys. Unknown keys and wrong values
raise :class:`ConfigError` with one line naming the key, e.g.
``[server] timeout: "5x" is not a duration``.

One schema in a few modules, read in the order of the file: ``fields`` (the value types
and their parsers), ``sections`` (each table's model, and :class:`Settings`),
``upstream`` (``[delivery]`` and everything an upstream can have), ``load`` (TOML in,
errors named by table and key) and ``render`` (the effective configuration out).
Everything is imported from here: ``from smtprelay.config import Settings``.
"""

from smtprelay.config.fields import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_LOCAL_SOCKET,
    MIN_LINE_LENGTH,
    Bool,
    Domain,
    Duration,
    EndpointField,
    Int,
    Mailbox,
    Mode,
    Nameserver,
    Network,
    OAuthURL,
    RateField,
    Size,
    SocketPath,
    _table_model,
    config_path,
)
from smtprelay.config.load import load, parse
from smtprelay.config.render import effective
from smtprelay.config.sections import (
    DEFAULT_WEBHOOK_RETRIES,
    AuthSettings,
    BounceSettings,
    DkimKeySettings,
    DkimSettings,
    EventsSettings,
    HttpSettings,
    LogSettings,
    RelaySettings,
    ServerSettings,
    Settings,
    SpoolSettings,
    TLSSettings,
    WebhookSettings,
)
from smtprelay.config.upstream import (
    DEFAULT_RETRY_SCHEDULE,
    DEFAULT_SLOWDOWN_BACKOFF,
    DeliverySettings,
    OAuth2Settings,
    RouteEntry,
    RouteSettings,
    SenderRouteSettings,
    SmarthostSettings,
    UpstreamLimits,
)
from smtprelay.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LOCAL_SOCKET",
    "DEFAULT_RETRY_SCHEDULE",
    "DEFAULT_SLOWDOWN_BACKOFF",
    "DEFAULT_WEBHOOK_RETRIES",
    "MIN_LINE_LENGTH",
    "AuthSettings",
    "Bool",
    "BounceSettings",
    "ConfigError",
    "DeliverySettings",
    "DkimKeySettings",
    "DkimSettings",
    "Domain",
    "Duration",
    "EndpointField",
    "EventsSettings",
    "HttpSettings",
    "Int",
    "LogSettings",
    "Mailbox",
    "Mode",
    "Nameserver",
    "Network",
    "OAuth2Settings",
    "OAuthURL",
    "RateField",
    "RelaySettings",
    "RouteEntry",
    "RouteSettings",
    "SenderRouteSettings",
    "ServerSettings",
    "Settings",
    "Size",
    "SmarthostSettings",
    "SocketPath",
    "SpoolSettings",
    "TLSSettings",
    "UpstreamLimits",
    "WebhookSettings",
    "_table_model",
    "config_path",
    "effective",
    "load",
    "parse",
]
