"""The field types of the configuration: strict TOML scalars, durations, sizes,
endpoints, networks, domains, socket paths, modes, URLs, and the base of every section.

Each parser raises ValueError with the text that ends up after the key in a ConfigError.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict

from smtprelay import defaults
from smtprelay.units import (
    Endpoint,
    parse_duration,
    parse_endpoint,
    parse_rate,
    parse_size,
)
from smtprelay.units import Rate as Rate

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


def _string(value: object, what: str) -> str:
    """``value`` if it is a string; else the error naming what was expected."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a {what} string")
    return value


def _parse_socket_path(value: object) -> str:
    """``""`` (off) or an absolute path short enough for a Unix socket address."""
    value = _string(value, "path")
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


def _parse_mailbox(value: object) -> str:
    if not isinstance(value, str) or value.count("@") != 1 or any(c in value for c in " <>\t"):
        raise ValueError(f'{value!r} is not a mailbox like "scanner@example.com"')
    local, domain = value.split("@")
    if not local or not domain:
        raise ValueError(f'{value!r} is not a mailbox like "scanner@example.com"')
    return value


Mailbox = Annotated[str, BeforeValidator(_parse_mailbox)]


def _parse_oauth_url(value: object) -> str:
    """https://, or http:// only to a loopback address (a test's token endpoint)."""
    from urllib.parse import urlsplit

    value = _string(value, "URL")
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


def _parse_webhook_url(value: object) -> str:
    from urllib.parse import urlsplit

    value = _string(value, "URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.strip()


def _parse_event_pattern(value: object) -> str:
    from smtprelay.events.types import valid_pattern

    if not isinstance(value, str) or not valid_pattern(value):
        raise ValueError(f'{value!r} is not an event type or pattern like "recipient.*"')
    return value


def _parse_selector(value: object) -> str:
    """A DKIM selector (RFC 6376 3.1): one or more DNS labels of letters, digits, '-'."""
    labels = value.split(".") if isinstance(value, str) else []
    if not labels or not all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        for label in labels
    ):
        raise ValueError(f"{value!r} is not a selector (DNS labels: letters, digits, '-')")
    return str(value).lower()


def _parse_http_listen(value: object) -> Endpoint | None:
    """``"host:port"``, or ``""`` for no HTTP endpoint at all."""
    if isinstance(value, str) and not value.strip():
        return None
    return parse_endpoint(value)


def _table_model(annotation: object) -> type[BaseModel] | None:
    """The model of a table-valued field (``X`` or ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
