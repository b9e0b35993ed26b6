"""TOML configuration -> frozen, typed settings. The one place where defaults live.

Every key of DESIGN.md section 3 that this release implements is declared here with its
default; `conf/smtprelay.toml` documents the same keys. Unknown keys and wrong values
raise :class:`ConfigError` with one line naming the key, e.g.
``[server] timeout: "5x" is not a duration``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from smtprelay.units import Endpoint, format_duration, parse_duration, parse_endpoint, parse_size

DEFAULT_CONFIG_PATH = Path("/etc/smtprelay/smtprelay.toml")

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
EndpointField = Annotated[Endpoint, BeforeValidator(parse_endpoint)]


def _parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a network string like \"192.0.2.0/24\"")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (CIDR, e.g. \"10.0.0.0/8\")") from None


def _parse_domain(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in " @\t"):
        raise ValueError(f"{value!r} is not a domain name")
    return value.strip().rstrip(".").lower()


Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_parse_network)
]
Domain = Annotated[str, BeforeValidator(_parse_domain)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class ServerSettings(_Section):
    hostname: str = Field(default_factory=socket.getfqdn, min_length=1)
    listen: tuple[EndpointField, ...] = (Endpoint("127.0.0.1", 2525),)
    listen_implicit_tls: tuple[EndpointField, ...] = ()
    max_message_size: Size = Field(default=25_000_000, gt=0)
    max_recipients: int = Field(default=1000, gt=0)
    max_connections: int = Field(default=200, gt=0)
    timeout: Duration = Field(default=300.0, gt=0)


class TLSSettings(_Section):
    # Empty means: generate a self-signed certificate under the spool directory on first run.
    cert_file: str = ""
    key_file: str = ""
    min_version: Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] = "TLSv1.2"


class AuthSettings(_Section):
    # Empty means: no SMTP AUTH at all (only trusted networks may relay).
    users_file: str = ""
    allow_plaintext: bool = False


class RelaySettings(_Section):
    trusted_networks: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    allowed_sender_domains: tuple[Domain, ...] = ()
    allowed_recipient_domains: tuple[Domain, ...] = ()


class SpoolSettings(_Section):
    dir: str = "var/spool"


class LogSettings(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings = AuthSettings()
    relay: RelaySettings = RelaySettings()
    spool: SpoolSettings = SpoolSettings()
    log: LogSettings = LogSettings()


class ConfigError(Exception):
    """Configuration is unusable; the message names the file or key and what is wrong."""


def config_path(explicit: str | None) -> Path:
    """``-c FILE``, else ``$SMTPRELAY_CONFIG``, else ``/etc/smtprelay/smtprelay.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SMTPRELAY_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


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


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if len(loc) == 1:
        if first["type"] == "extra_forbidden":
            return f"[{loc[0]}]: unknown section"
        where = f"[{loc[0]}]"
    else:
        where = f"[{loc[0]}] {loc[1]}" + "".join(f"[{p}]" for p in loc[2:])
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"].endswith("_type") or first["type"] in ("literal_error", "greater_than"):
        message = f"{first['input']!r}: {message[0].lower()}{message[1:]}"
    extra = len(error.errors()) - 1
    suffix = f" (and {extra} more error{'s' if extra > 1 else ''})" if extra else ""
    return f"{where}: {message}{suffix}"


def effective(settings: Settings) -> str:
    """The effective configuration as TOML, every key shown (for ``check-config``)."""
    lines: list[str] = []
    for section_name, section in settings:
        lines.append(f"[{section_name}]")
        for key, value in section:
            lines.append(f"{key} = {_toml_value(section_name, key, value)}")
        lines.append("")
    return "\n".join(lines)


_DURATION_KEYS = {("server", "timeout")}


def _toml_value(section: str, key: str, value: object) -> str:
    if (section, key) in _DURATION_KEYS and isinstance(value, float):
        return json.dumps(format_duration(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, tuple) and not isinstance(value, Endpoint):
        return "[" + ", ".join(json.dumps(str(v)) for v in value) + "]"
    return json.dumps(str(value))
