"""Parsers for the human units used in the configuration: durations, sizes, endpoints."""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import NamedTuple

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_DURATION_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?", re.IGNORECASE)
_SIZE_FACTORS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: object) -> float:
    """``"30s"``, ``"5m"``, ``"4h"``, ``"5d"``, ``"1w"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    raise ValueError(f'{value!r} is not a duration (use e.g. "30s", "5m", "4h", "5d")')


def format_duration(seconds: float) -> str:
    """The shortest exact form that parse_duration reads back: 300 -> "5m", 0.5 -> "0.5s"."""
    for unit in ("w", "d", "h", "m"):
        factor = _DURATION_SECONDS[unit]
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{Decimal(repr(float(seconds))):f}s"  # positional: never "1e-07"


def parse_size(value: object) -> int:
    """A byte count or ``"25MB"`` (KB/MB/GB powers of 1000, KiB/MiB/GiB powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            factor = _SIZE_FACTORS[(match.group(2) or "b").lower()]
            return int(float(match.group(1)) * factor)
    raise ValueError(f'{value!r} is not a size (use a byte count or e.g. "25MB", "10MiB")')


class Endpoint(NamedTuple):
    """A listening or connecting address; IPv6 hosts are written ``[::1]:2525``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(value: object) -> Endpoint:
    if not isinstance(value, str):
        raise ValueError(f'{value!r} is not a "host:port" string')
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f'{value!r} is not "[ipv6]:port"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {value!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f'{value!r} is not "host:port" (IPv6 as "[::1]:2525")')
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} in {value!r} is not a number from 1 to 65535")
    return Endpoint(host, int(port))


# Rates of upstream rate limits: "10/s", "30/min", "1000/h".
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(s|min|h)")
_RATE_PERIODS = {"s": 1.0, "min": 60.0, "h": 3600.0}


class Rate(NamedTuple):
    """``messages`` (transactions) per ``period`` seconds, written ``"10/s"``."""

    messages: float
    period: float

    @property
    def interval(self) -> float:
        """Seconds between two transactions at this rate."""
        return self.period / self.messages

    def __str__(self) -> str:
        unit = next(u for u, p in _RATE_PERIODS.items() if p == self.period)
        number = int(self.messages) if float(self.messages).is_integer() else self.messages
        return f"{number}/{unit}"


def parse_rate(value: object) -> Rate | None:
    """``"10/s"``, ``"30/min"``, ``"1000/h"`` -> Rate; ``""`` -> None (no limit)."""
    if isinstance(value, Rate) or value is None:
        return value
    if isinstance(value, str):
        if not value.strip():
            return None
        match = _RATE.fullmatch(value.strip())
        if match and float(match.group(1)) > 0:
            return Rate(float(match.group(1)), _RATE_PERIODS[match.group(2)])
    raise ValueError(f'{value!r} is not a rate (use e.g. "10/s", "30/min", "1000/h")')


_RESET = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?:\s*UTC)?", re.IGNORECASE)


def parse_quota_reset(value: object) -> str:
    """``"HH:MM UTC"`` (the daily count starts again then) or ``"rolling"`` (any 24 h),
    normalised: ``"0:00"`` -> ``"00:00 UTC"``."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "rolling":
            return "rolling"
        match = _RESET.fullmatch(text)
        if match:
            return f"{int(match.group(1)):02d}:{match.group(2)} UTC"
    raise ValueError(f'{value!r} is not a time of day like "00:00 UTC", nor "rolling"')


def reset_minute(reset: str) -> int | None:
    """Minutes after midnight UTC of a normalised ``quota_reset``; None for rolling."""
    if reset == "rolling":
        return None
    hours, minutes = reset.removesuffix(" UTC").split(":")
    return int(hours) * 60 + int(minutes)
