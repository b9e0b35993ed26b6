"""Reading the configuration file: TOML -> :class:`Settings`, and a validation error
-> one line naming the table and key (``[server] timeout: "5x" is not a duration``)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from smtprelay.config.fields import _table_model
from smtprelay.config.render import _toml_string
from smtprelay.config.sections import Settings
from smtprelay.errors import ConfigError


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
