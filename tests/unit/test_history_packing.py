"""smtprelay.history: a kept history between events -- a tuple while it is open, one
``bytes`` once sealed -- gives back every field, and its owner reads the first time,
the removal time and "queued" without opening it."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from smtprelay.history import _Kept, first_of, queued_of, removed_at_of

_times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_records = st.lists(st.text(max_size=40).map(lambda t: json.dumps({"text": t}).encode()))


@st.composite
def kept(draw: st.DrawFn) -> _Kept:
    return _Kept(
        qid=draw(st.text("0123456789ABCDEF", min_size=13, max_size=13)),
        first=draw(_times),
        records=tuple(draw(_records)),
        omitted=draw(st.integers(0, 10_000)),
        queued=draw(st.booleans()),
        removed_at=draw(st.none() | _times),
        envelope=draw(st.none() | st.just(b'{"qid":"Q","sender":"a@b.test"}')),
        via=draw(st.sampled_from(["smtp", "http", "sendmail"])),
        tags=tuple(draw(st.lists(st.text(max_size=10), max_size=3))),
        send_at=draw(st.none() | _times),
        deferred=draw(st.booleans()),
        canceled_by=draw(st.none() | st.text(max_size=20)),
    )


@given(kept())
def test_packed_and_unpacked_it_is_the_same_history(history: _Kept) -> None:
    packed = history.packed()
    sealed = history.removed_at is not None or history.deferred or history.send_at is not None
    assert isinstance(packed, bytes) == sealed
    assert _Kept.unpacked(history.qid, packed) == history
    assert first_of(packed) == history.first
    assert removed_at_of(packed) == history.removed_at
    assert queued_of(packed) == history.queued
