"""backoff.next_delay: the retry schedule, its jitter, and the end of a message's life."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from smtprelay.delivery import backoff

SCHEDULE = (300.0, 600.0, 1200.0)
LIFETIME = 5 * 86400.0


def test_follows_the_schedule_and_repeats_the_last_entry() -> None:
    no_jitter = random.Random(0)
    no_jitter.uniform = lambda a, b: 0.0  # type: ignore[method-assign]
    delays = [backoff.next_delay(n, 0.0, SCHEDULE, LIFETIME, no_jitter) for n in range(1, 6)]
    assert delays == [300.0, 600.0, 1200.0, 1200.0, 1200.0]


@given(
    attempts=st.integers(min_value=1, max_value=1000),
    age=st.floats(min_value=0, max_value=LIFETIME * 2, allow_nan=False),
    seed=st.integers(),
)
def test_delay_is_jittered_within_ten_percent_and_never_past_the_lifetime(
    attempts: int, age: float, seed: int
) -> None:
    delay = backoff.next_delay(attempts, age, SCHEDULE, LIFETIME, random.Random(seed))
    if age >= LIFETIME:
        assert delay is None
        return
    assert delay is not None
    base = SCHEDULE[min(attempts, len(SCHEDULE)) - 1]
    assert delay >= 1.0
    assert delay <= max(1.0, LIFETIME - age) + 1e-9
    if LIFETIME - age >= base * 1.1:
        assert base * 0.9 - 1e-9 <= delay <= base * 1.1 + 1e-9


def test_last_retry_lands_at_the_end_of_the_lifetime() -> None:
    # 100 s left, next scheduled retry in 300 s: try once more when the lifetime ends.
    delay = backoff.next_delay(1, LIFETIME - 100, SCHEDULE, LIFETIME, random.Random(1))
    assert delay == 100.0
    assert backoff.next_delay(2, LIFETIME, SCHEDULE, LIFETIME) is None


def test_jitter_spreads_messages_deferred_together() -> None:
    rng = random.Random(7)
    delays = {backoff.next_delay(1, 0.0, SCHEDULE, LIFETIME, rng) for _ in range(50)}
    assert len(delays) > 40


@given(st.floats(1.7e9, 2e9), st.floats(1.0, 86400.0))
def test_a_retry_time_is_the_next_whole_second_not_before_the_delay(
    now: float, delay: float
) -> None:
    when = backoff.retry_at(now, delay)
    assert when == int(when) and now + delay <= when < now + delay + 1
