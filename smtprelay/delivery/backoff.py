"""When to try again: a pure function of attempts and age (no clock, no I/O).

The schedule comes from ``[delivery] retry_schedule``; its last entry repeats. A random
jitter of up to 10% spreads retries so that messages deferred together (an outage) do
not all come back in the same second -- the regret Postfix documents about its own queue.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

JITTER = 0.1


def next_delay(
    attempts: int,
    age: float,
    schedule: Sequence[float],
    lifetime: float,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt, or None when the message has lived long enough.

    ``attempts`` counts the attempts made so far (>= 1); ``age`` is seconds since arrival.
    The last retry is pulled in so that it happens right at the end of ``lifetime``.
    """
    if age >= lifetime:
        return None
    base = schedule[min(attempts, len(schedule)) - 1]
    jitter = (rng or random).uniform(-JITTER, JITTER) * base
    return max(1.0, min(base + jitter, lifetime - age))


def retry_at(now: float, delay: float) -> float:
    """The time of the next attempt, ``delay`` seconds from ``now``, rounded up to a
    whole second as Postfix's queue times are: the messages deferred into one second
    then share its time (delivery.schedule keeps one object for it), and the jitter
    still spreads them over the seconds."""
    return float(math.ceil(now + delay))
