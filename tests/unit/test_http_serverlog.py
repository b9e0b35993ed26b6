"""smtprelay.web.serverlog: aiohttp's records about malformed requests, one line each."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from smtprelay.web.guard import LogBudget
from smtprelay.web.serverlog import MalformedRequests, printable


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def aiohttp_record(
    exc: BaseException, remote: str = "192.0.2.9", level: int = logging.ERROR
) -> logging.LogRecord:
    """The record aiohttp's RequestHandler.handle_error makes."""
    return logging.LogRecord(
        "smtprelay.http.server",
        level,
        __file__,
        1,
        "Error handling request from %s",
        (remote,),
        (type(exc), exc, None),
    )


def test_a_malformed_request_becomes_one_escaped_warning() -> None:
    keep = MalformedRequests()
    record = aiohttp_record(BadHttpMessage("Invalid method:\n\n  b'\x1b[2J'\r\nforged: line"))
    assert keep.filter(record)
    text = record.getMessage()
    assert text == (
        "unknown[192.0.2.9]: malformed HTTP request (400 Invalid method: b'\\x1b[2J' forged: line)"
    )
    assert (record.levelno, record.levelname, record.exc_info) == (logging.WARNING, "WARNING", None)
    assert record.service == "http"  # type: ignore[attr-defined]


def test_an_oversized_header_line_is_shortened() -> None:
    record = aiohttp_record(LineTooLong(b"a" * 5000, 8190))
    assert MalformedRequests().filter(record)
    assert len(record.getMessage()) < 250
    assert record.getMessage().endswith("...)")


def test_first_garbage_line_logged_at_debug_is_shown_as_a_warning_too() -> None:
    record = aiohttp_record(BadHttpMessage("Invalid method"), level=logging.DEBUG)
    assert MalformedRequests().filter(record)
    assert record.levelno == logging.WARNING


def test_a_flood_of_malformed_requests_is_rate_limited() -> None:
    clock = Clock()
    keep = MalformedRequests(LogBudget(burst=2, interval=10.0, clock=clock))
    shown = [keep.filter(aiohttp_record(BadHttpMessage("x"))) for _ in range(5)]
    assert shown == [True, True, False, False, False]
    clock.now += 10.0
    record = aiohttp_record(BadHttpMessage("x"))
    assert keep.filter(record)
    assert record.getMessage().endswith("; 3 more from this address not logged")


def test_other_records_pass_unchanged() -> None:
    record = aiohttp_record(RuntimeError("a bug"))
    assert MalformedRequests().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_printable() -> None:
    assert printable("a\x00b\x1bc\u00e9") == "a\\x00b\\x1bc\\xe9"
    assert printable("x" * 10, limit=8) == "xxxxx..."
