"""smtprelay.units: durations, sizes and endpoints as written in the configuration."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtprelay.units import Endpoint, format_duration, parse_duration, parse_endpoint, parse_size

# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("4h", 4 * 3600),
        ("5d", 5 * 86400),
        ("1w", 7 * 86400),
        ("90", 90),
        (" 5m ", 300),
        ("1.5h", 5400),
        ("0s", 0),
        (0, 0),
        (30, 30),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    "bad",
    [
        "5x",
        "",
        "m",
        "-1",
        "-5m",
        "5 m s",
        "5mm",
        "1e3s",
        "five",
        -1,
        -0.5,
        True,
        False,
        None,
        [30],
        {"s": 30},
    ],
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    # The message shows the offending value so config errors can quote it.
    assert repr(bad) in str(info.value)


def test_parse_duration_bad_string_message_suggests_units() -> None:
    with pytest.raises(ValueError, match=r"'5x' is not a duration.*30s"):
        parse_duration("5x")


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips_whole_seconds(seconds: int) -> None:
    text = format_duration(float(seconds))
    assert parse_duration(text) == seconds
    assert text[-1] in "smhdw"


@given(st.floats(min_value=0, max_value=10**9, allow_nan=False, allow_infinity=False))
@example(1_000_001.0)  # not a whole minute and more than six significant digits
@example(123_456.5)
@example(1e-7)
def test_format_duration_round_trips_any_duration(seconds: float) -> None:
    """format_duration is used to print the effective configuration, which must re-parse
    to the same value; so for every duration parse_duration accepts, the printed form
    must parse back to exactly that duration."""
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (300, "5m"),
        (90, "90s"),
        (3600, "1h"),
        (86400, "1d"),
        (7 * 86400, "1w"),
        (0, "0s"),
        (0.5, "0.5s"),
        (2 * 86400 + 3600, "49h"),
    ],
)
def test_format_duration_shortest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("25MB", 25_000_000),
        ("10KiB", 10_240),
        ("1KB", 1000),
        ("1GB", 1000**3),
        ("2MiB", 2 * 1024**2),
        ("1GiB", 1024**3),
        ("25mb", 25_000_000),
        ("25 MB", 25_000_000),
        ("512B", 512),
        ("512", 512),
        ("1.5KB", 1500),
        (0, 0),
        (1234, 1234),
    ],
)
def test_parse_size_accepts(text: object, size: int) -> None:
    assert parse_size(text) == size
    assert type(parse_size(text)) is int


@pytest.mark.parametrize(
    "bad", ["25XB", "MB", "", "-1", "25 M B", "1TB", "ten", -1, True, 2.5, None, ["1MB"]]
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(bad)
    assert repr(bad) in str(info.value)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(
        [
            ("KB", 1000),
            ("MB", 1000**2),
            ("GB", 1000**3),
            ("KiB", 1024),
            ("MiB", 1024**2),
            ("GiB", 1024**3),
            ("B", 1),
            ("", 1),
        ]
    ),
)
def test_parse_size_units_multiply(count: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_size(f"{count}{suffix}") == count * factor


# --- endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.1:2525", Endpoint("127.0.0.1", 2525)),
        ("[::1]:2525", Endpoint("::1", 2525)),
        ("localhost:25", Endpoint("localhost", 25)),
        ("mx.example.net:587", Endpoint("mx.example.net", 587)),
        ("0.0.0.0:1", Endpoint("0.0.0.0", 1)),
        ("[2001:db8::25]:65535", Endpoint("2001:db8::25", 65535)),
        (" 127.0.0.1:25 ", Endpoint("127.0.0.1", 25)),
    ],
)
def test_parse_endpoint_accepts(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.1",  # no port
        "localhost",
        "[::1]",
        "127.0.0.1:",
        ":25",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:+25",
        "127.0.0.1:2x",
        "::1:25",  # IPv6 must be bracketed
        "2001:db8::1:25",
        "[127.0.0.1]:25",  # brackets are for IPv6 only
        "[nothost]:25",
        "[::1]25",
        "",
        2525,
        None,
        ("127.0.0.1", 25),
    ],
)
def test_parse_endpoint_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(bad)


def test_endpoint_str_brackets_ipv6() -> None:
    assert str(Endpoint("::1", 2525)) == "[::1]:2525"
    assert str(Endpoint("127.0.0.1", 2525)) == "127.0.0.1:2525"


_hostnames = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True
)


@given(
    st.one_of(_hostnames, st.ip_addresses().map(str)),
    st.integers(min_value=1, max_value=65535),
)
def test_endpoint_str_round_trips(host: str, port: int) -> None:
    endpoint = Endpoint(host, port)
    assert parse_endpoint(str(endpoint)) == endpoint
