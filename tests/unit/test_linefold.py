"""Folding of lines over the SMTP limit (smtprelay/delivery/linefold.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.delivery.linefold import fold, fold_line
from tests.unfold import longest_line, unfolds_to

LIMIT = 998
HEAD = b"From: <a@example.com>\r\nSubject: folding\r\n"


def message(*body_lines: bytes, headers: bytes = HEAD) -> bytes:
    return headers + b"\r\n" + b"".join(line + b"\r\n" for line in body_lines)


def rfc5322_unfold(data: bytes) -> bytes:
    """RFC 5322 2.2.3: unfolding removes each CRLF that is followed by white space."""
    return re.sub(rb"\r\n(?=[ \t])", b"", data)


@pytest.mark.parametrize("length", [2_000, 10_000, 100_000])
def test_body_line_without_white_space_is_cut_postfix_style(length: int) -> None:
    """No white space: cut at the limit, the continuation starts with an inserted space."""
    original = message(b"<p>" + b"x" * (length - 3), b"after")
    result = fold(original, LIMIT)
    assert result.lines == 1 and result.longest == length
    lines = result.data.split(b"\r\n")
    body = lines[lines.index(b"") + 1 :]
    assert len(body[0]) == LIMIT
    assert all(line.startswith(b" x") and len(line) <= LIMIT for line in body[1:-3])
    assert body[-2:] == [b"after", b""]
    assert longest_line(result.data) == LIMIT
    assert unfolds_to(result.data, original)
    # Postfix's "<CR><LF><SPACE>": removing each inserted CRLF + SP restores the line.
    assert result.data.replace(b"\r\n ", b"") == original


def test_html_line_is_folded_before_white_space() -> None:
    line = b"<p>" + b"word " * 2_000 + b"</p>"  # 10,007 octets
    original = message(line)
    result = fold(original, LIMIT)
    assert result.lines == 1
    assert longest_line(result.data) <= LIMIT
    pieces = result.data.split(b"\r\n")[3:-1]
    assert all(p.endswith(b"word") for p in pieces[:-1])  # words stay whole
    assert all(p.startswith(b" word") for p in pieces[1:])
    assert rfc5322_unfold(result.data) == original  # only CRLFs were inserted


def test_long_header_is_folded_at_white_space_and_unfolds_exactly() -> None:
    header = b"X-Long: " + b" ".join(b"token%04d" % i for i in range(200))  # 2,007 octets
    assert len(header) > 2_000
    original = message(b"body", headers=HEAD + header + b"\r\n")
    result = fold(original, LIMIT)
    assert result.lines == 1 and result.longest == len(header)
    assert longest_line(result.data) <= LIMIT
    assert rfc5322_unfold(result.data) == original


def test_header_without_white_space_gets_crlf_space() -> None:
    header = b"X-Token:" + b"A" * 2_000
    original = message(b"body", headers=HEAD + header + b"\r\n")
    result = fold(original, LIMIT)
    lines = result.data.split(b"\r\n")
    assert lines[2] == header[:LIMIT]
    assert lines[3] == b" " + header[LIMIT : LIMIT + LIMIT - 1]
    assert lines[4] == b" " + header[2 * LIMIT - 1 :]
    assert lines[5] == b""  # still the end of the header section
    assert result.data.replace(b"\r\n ", b"") == original


def test_header_value_without_white_space_folds_after_the_colon_first() -> None:
    header = b"X-Token: " + b"A" * 2_000
    pieces = fold_line(header, LIMIT)
    assert pieces[0] == b"X-Token:"
    assert all(p.startswith(b" A") and len(p) <= LIMIT for p in pieces[1:])
    assert unfolds_to(b"\r\n".join(pieces), header)


def test_message_without_long_lines_is_returned_as_it_is() -> None:
    original = message(b"a" * LIMIT, b"." + b"b" * (LIMIT - 1), b"")
    result = fold(original, LIMIT)
    assert result.data is original and result.lines == 0


def test_limit_zero_turns_folding_off() -> None:
    original = message(b"x" * 5_000)
    assert fold(original, 0).data is original


def test_exactly_the_limit_is_kept_one_more_is_folded() -> None:
    assert fold_line(b"a" * 999, LIMIT) == [b"a" * LIMIT, b" a"]
    assert fold(message(b"a" * LIMIT), LIMIT).lines == 0
    assert fold(message(b"a" * (LIMIT + 1)), LIMIT).lines == 1


def test_last_line_without_line_ending() -> None:
    original = HEAD + b"\r\n" + b"z" * 1_500
    result = fold(original, LIMIT)
    assert result.lines == 1
    assert not result.data.endswith(b"\r\n")
    assert unfolds_to(result.data, original)


def test_folded_line_starting_with_a_dot_leaves_room_for_dot_stuffing() -> None:
    """On the wire "." becomes ".." (RFC 5321 4.5.2): the first piece is one shorter."""
    pieces = fold_line(b"." + b"y" * 1_999, LIMIT)
    assert len(pieces[0]) == LIMIT - 1
    assert all(p[:1] == b" " for p in pieces[1:])  # no fold ever starts a line with "."
    stuffed = [b"." + p if p.startswith(b".") else p for p in pieces]
    assert max(map(len, stuffed)) <= LIMIT


def test_cut_never_splits_a_utf8_sequence() -> None:
    line = "Überlänge€😀".encode() * 200  # 4,000 octets, no white space, 2- to 4-octet runes
    pieces = fold_line(line, LIMIT)
    assert all(len(p) <= LIMIT for p in pieces)
    for piece in pieces:
        piece.decode("utf-8")  # raises if a sequence was cut
    assert b"".join(p.removeprefix(b" ") for p in pieces) == line


def test_whitespace_run_at_the_start_is_not_a_place_to_fold() -> None:
    """A continuation line may not hold only white space (RFC 5322 3.2.2)."""
    line = b"\t" * 3 + b"q" * 1_200 + b" tail"
    pieces = fold_line(line, LIMIT)
    assert all(p.strip(b" \t") for p in pieces)
    assert unfolds_to(b"\r\n".join(pieces), line)


def test_line_of_only_white_space_is_cut_without_inserting_any() -> None:
    line = b" " * 1_500
    pieces = fold_line(line, LIMIT)
    assert [len(p) for p in pieces] == [LIMIT, 1_500 - LIMIT]
    assert b"".join(pieces) == line


def test_counts_lines_and_longest() -> None:
    original = message(b"a" * 1_000, b"short", b"b" * 3_000, b"c" * 998)
    result = fold(original, LIMIT)
    assert (result.lines, result.longest) == (2, 3_000)


# --- properties -------------------------------------------------------------------------

_octets = st.sampled_from(
    [
        b"a",
        b"Z",
        b"7",
        b" ",
        b"\t",
        b".",
        b"<",
        b"\xc3\xa9",
        b"\xe2\x82\xac",
        b"\xf0\x9f\x98\x80",
        b"\xff",
    ]
)
# A line is a few runs of one octet each: long runs without white space, white space in
# runs, dots, multi-octet UTF-8 and stray 8-bit octets, at every length around the limit.
_runs = st.builds(lambda octet, n: octet * n, _octets, st.integers(1, 1_300))
_lines = st.lists(st.lists(_runs, max_size=6).map(b"".join), max_size=6)


@settings(max_examples=300, deadline=None)
@given(lines=_lines, limit=st.integers(78, 1_200), ending=st.booleans())
def test_every_line_fits_and_the_content_is_kept(
    lines: list[bytes], limit: int, ending: bool
) -> None:
    original = b"\r\n".join(lines) + (b"\r\n" if ending else b"")
    result = fold(original, limit)
    long_lines = [line for line in original.split(b"\r\n") if len(line) > limit]
    assert result.lines == len(long_lines)
    assert result.longest == max(map(len, long_lines), default=0)
    if not long_lines:
        assert result.data is original
    out = result.data.split(b"\r\n")
    kept = set(original.split(b"\r\n"))
    for line in out:
        # On the wire a leading "." is doubled: a fold leaves room for it.
        assert len(line) + (line[:1] == b".") <= limit or (line in kept and len(line) <= limit)
    assert unfolds_to(result.data, original)
    assert fold(result.data, limit).lines == 0  # folding twice changes nothing


@settings(max_examples=200, deadline=None)
@given(lines=_lines, limit=st.integers(78, 1_200))
def test_dots_only_where_the_original_had_them(lines: list[bytes], limit: int) -> None:
    """Dot-stuffing after folding: no fold makes a line starting with "." (or a lone ".")."""
    original = b"\r\n".join(lines) + b"\r\n"
    out = fold(original, limit).data.split(b"\r\n")
    dotted_in = sum(line.startswith(b".") for line in original.split(b"\r\n"))
    assert sum(line.startswith(b".") for line in out) == dotted_in
