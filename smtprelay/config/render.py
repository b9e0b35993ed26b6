"""The effective configuration as TOML, every key shown (``smtprelay check-config``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from smtprelay.config.fields import _table_model
from smtprelay.config.sections import Settings
from smtprelay.units import Endpoint, Rate, format_duration

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
