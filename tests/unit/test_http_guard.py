"""smtprelay.web.guard: the per-address delay for failed bearer tokens and the budget
of their log lines, on an injected clock."""

from __future__ import annotations

from smtprelay.clientkey import client_key
from smtprelay.web.guard import LogBudget, Penalty


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def test_the_delay_doubles_with_each_recent_failure_up_to_the_cap() -> None:
    clock = Clock()
    penalty = Penalty(base=0.5, cap=4.0, forget=60.0, clock=clock)
    earned = [penalty.failure("192.0.2.9") for _ in range(6)]
    assert earned == [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (6, 4.0)]
    assert penalty.recent("192.0.2.9") == 6


def test_failures_are_counted_per_address_and_shared_by_its_requests() -> None:
    """Parallel requests from one address all count against it: the delays of
    requests that fail at the same moment still grow one after the other."""
    clock = Clock()
    penalty = Penalty(base=1.0, cap=100.0, clock=clock)
    same_moment = [penalty.failure("192.0.2.9")[1] for _ in range(4)]
    assert same_moment == [1.0, 2.0, 4.0, 8.0]
    # Another address starts from the beginning: one client's guesses cost no one else.
    assert penalty.failure("192.0.2.10") == (1, 1.0)
    assert penalty.recent("198.51.100.1") == 0


def test_failures_are_forgotten_after_a_quiet_period() -> None:
    clock = Clock()
    penalty = Penalty(base=1.0, cap=100.0, forget=60.0, clock=clock)
    penalty.failure("192.0.2.9")
    clock.now += 59.0
    assert penalty.failure("192.0.2.9") == (2, 2.0)  # within 60 s of the last one
    clock.now += 61.0
    assert penalty.recent("192.0.2.9") == 0
    assert penalty.failure("192.0.2.9") == (1, 1.0)


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.9") == "192.0.2.9"
    assert client_key("192.0.2.9") == "192.0.2.9"
    assert client_key("unknown") == "unknown"
    penalty = Penalty(base=1.0, cap=100.0, clock=Clock())
    penalty.failure("2001:db8:1:2::1")
    assert penalty.failure("2001:db8:1:2:ffff::77") == (2, 2.0)  # same /64
    assert penalty.failure("2001:db8:1:3::1") == (1, 1.0)


def test_remembered_addresses_are_bounded() -> None:
    clock = Clock()
    penalty = Penalty(base=1.0, cap=100.0, max_addresses=3, clock=clock)
    for n in range(5):
        penalty.failure(f"192.0.2.{n}")
        clock.now += 1
    assert [penalty.recent(f"192.0.2.{n}") for n in range(5)] == [0, 0, 1, 1, 1]


def test_log_budget_per_address_says_how_many_lines_were_left_out() -> None:
    clock = Clock()
    budget = LogBudget(
        burst=3, interval=10.0, global_burst=1000, global_interval=0.001, clock=clock
    )
    answers = [budget.allow("192.0.2.9") for _ in range(7)]
    assert answers == [0, 0, 0, None, None, None, None]
    assert budget.allow("192.0.2.10") == 0  # another address has its own budget
    clock.now += 10.0  # one more line's worth
    assert budget.allow("192.0.2.9") == 4
    assert budget.allow("192.0.2.9") is None
    clock.now += 25.0
    assert [budget.allow("192.0.2.9") for _ in range(3)] == [1, 0, None]


def test_log_budget_bounds_all_addresses_together() -> None:
    clock = Clock()
    budget = LogBudget(burst=5, interval=1.0, global_burst=4, global_interval=1.0, clock=clock)
    written = [budget.allow(f"192.0.2.{n}") for n in range(10)]  # rotating addresses
    assert written.count(None) == 6
    assert written[:4] == [0, 0, 0, 0]
