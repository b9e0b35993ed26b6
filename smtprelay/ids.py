"""Queue IDs: unique, time-ordered, short, letters and digits only.

An ID is 11 characters of microseconds since the epoch followed by 2 random characters,
all in Crockford's base32 alphabet (digits and upper-case letters without I, L, O, U).
The alphabet is in ASCII order, so sorting IDs as strings sorts them by arrival time,
and ``ls`` of the spool lists messages oldest first. Within one process the time part
is strictly increasing. The last two characters separate processes: the daemon's
processes each have a tag of their own (:func:`set_tag`), so their IDs never collide;
elsewhere they are random (and the spool creates files exclusively, so a collision can
never overwrite a message).
"""

from __future__ import annotations

import random
import time

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TIME_CHARS = 11
RANDOM_CHARS = 2
LENGTH = TIME_CHARS + RANDOM_CHARS
_VALUE = {c: i for i, c in enumerate(ALPHABET)}

_last_micros = 0
_random = random.Random()
_tag: int | None = None


def set_tag(tag: int) -> None:
    """Give this process's IDs a fixed last part, distinct from its sibling processes'."""
    global _tag
    if not 0 <= tag < 32**RANDOM_CHARS:
        raise ValueError(f"process tag {tag} out of range")
    _tag = tag


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(now: float | None = None) -> str:
    global _last_micros
    micros = int((time.time() if now is None else now) * 1_000_000)
    if micros <= _last_micros:
        micros = _last_micros + 1
    _last_micros = micros
    # Uniqueness, not secrecy: the PRNG (seeded per process) spares a syscall per message.
    last = _random.getrandbits(5 * RANDOM_CHARS) if _tag is None else _tag
    return _encode(micros, TIME_CHARS) + _encode(last, RANDOM_CHARS)


def is_valid(qid: str) -> bool:
    return len(qid) == LENGTH and all(c in _VALUE for c in qid)


def timestamp(qid: str) -> float:
    """Arrival time encoded in a queue ID, in seconds since the epoch."""
    micros = 0
    for c in qid[:TIME_CHARS]:
        micros = micros * 32 + _VALUE[c]
    return micros / 1_000_000
