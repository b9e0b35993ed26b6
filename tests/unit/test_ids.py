"""smtprelay.ids: queue IDs are short, letters and digits, unique and time-ordered."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay import ids

ALPHABET = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")  # Crockford base32, no I L O U


@pytest.fixture
def fresh_clock() -> Iterator[None]:
    """Let a test choose arbitrary timestamps without the process-wide monotonic floor."""
    saved = ids._last_micros
    ids._last_micros = 0
    yield
    ids._last_micros = max(saved, ids._last_micros)


def test_shape() -> None:
    qid = ids.new_id()
    assert len(qid) == 13
    assert set(qid) <= ALPHABET
    assert qid.isalnum() and qid.isupper()
    assert ids.is_valid(qid)


def test_many_quick_ids_are_unique_and_sorted_by_creation() -> None:
    made = [ids.new_id() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert all(a < b for a, b in itertools.pairwise(made)), "not strictly increasing"
    assert sorted(made) == made
    for qid in made[:: len(made) // 50]:
        assert len(qid) == 13 and set(qid) <= ALPHABET


def test_ids_with_a_fixed_clock_still_increase() -> None:
    now = time.time()
    made = [ids.new_id(now) for _ in range(1000)]
    assert sorted(set(made)) == made


def test_ids_increase_even_if_the_clock_steps_back() -> None:
    first = ids.new_id(time.time())
    second = ids.new_id(time.time() - 3600)
    assert first < second


def test_timestamp_near_now() -> None:
    before = time.time()
    qid = ids.new_id()
    assert before - 1e-6 <= ids.timestamp(qid) <= time.time() + 1.0


@given(st.floats(min_value=0.0, max_value=4_102_444_800.0))  # up to 2100-01-01
def test_timestamp_round_trip_within_one_microsecond(now: float) -> None:
    saved = ids._last_micros
    ids._last_micros = 0
    try:
        qid = ids.new_id(now)
    finally:
        ids._last_micros = max(saved, ids._last_micros)
    assert ids.is_valid(qid)
    assert abs(ids.timestamp(qid) - now) <= 1e-6 + 1e-9


@given(st.lists(st.floats(min_value=0.0, max_value=4_102_444_800.0), min_size=2, max_size=30))
def test_string_order_is_time_order(times: list[float]) -> None:
    """IDs made at distinct microseconds sort as strings in time order (ls of the spool)."""
    made = []
    saved = ids._last_micros
    try:
        for t in times:
            ids._last_micros = -1  # forget earlier IDs (0 would bump an ID made at t=0)
            made.append((ids.new_id(t), int(t * 1_000_000)))
    finally:
        ids._last_micros = max(saved, ids._last_micros)
    for (a, ta), (b, tb) in itertools.pairwise(made):
        if ta < tb:
            assert a < b
        elif ta > tb:
            assert a > b


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0",
        "0123456789ABC"[:12],  # 12 chars
        "0123456789ABCD",  # 14 chars
        "0123456789abc",  # lower case
        "0123456789ABI",  # I is not in the alphabet
        "0123456789ABL",
        "0123456789ABO",
        "0123456789ABU",
        "0123456789AB-",
        "0123456789AB ",
        "0123456789AB\u0665",  # a non-ASCII digit
        "../../etc/pas",
    ],
)
def test_is_valid_rejects(bad: str) -> None:
    assert not ids.is_valid(bad)


@given(st.text(max_size=20))
def test_is_valid_means_letters_digits_13(text: str) -> None:
    assert ids.is_valid(text) == (len(text) == 13 and set(text) <= ALPHABET)


def test_fresh_clock_fixture_restores(fresh_clock: None) -> None:
    qid = ids.new_id(1.0)
    assert abs(ids.timestamp(qid) - 1.0) <= 1e-6


def test_process_tags_keep_ids_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes of one daemon minting IDs in the same microsecond never collide."""
    monkeypatch.setattr(ids, "_tag", None)
    now = 1_800_000_000.123456
    made = set()
    for tag in (0, 1, 2, 1023):
        ids.set_tag(tag)
        monkeypatch.setattr(ids, "_last_micros", 0)
        qid = ids.new_id(now)
        assert ids.is_valid(qid) and ids.timestamp(qid) == pytest.approx(now)
        made.add(qid)
    assert len(made) == 4
    with pytest.raises(ValueError):
        ids.set_tag(1024)
