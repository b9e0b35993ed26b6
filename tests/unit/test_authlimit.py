"""smtprelay.inbound.authlimit: the per-address AUTH slow-down and the bcrypt pool, on a
virtual clock (the order and spacing of attempts are exact, not measured)."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest

from smtprelay.clientkey import client_key
from smtprelay.inbound import authlimit
from smtprelay.inbound.authlimit import KNOWN, NEUTRAL, SUSPECT, BcryptPool, Throttle
from tests.unit.virtual_time import VirtualTime

A, B = "192.0.2.9", "198.51.100.7"


def throttle(time: VirtualTime, **kwargs: float) -> Throttle:
    return Throttle(clock=time.clock, sleep=time.sleep, **kwargs)  # type: ignore[arg-type]


async def attempt(
    th: Throttle,
    time: VirtualTime,
    ip: str,
    ok: bool,
    starts: list[tuple[str, float]],
    work: float = 0.0,
) -> None:
    async with th.turn(ip) as turn:
        starts.append((ip, time.now))
        if work:
            await time.sleep(work)  # the bcrypt check, in virtual seconds
        turn.ok = ok


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.9", "192.0.2.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.9", "192.0.2.9"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_client_key(ip: str, key: str) -> None:
    assert client_key(ip) == key


def test_parallel_failures_from_one_address_take_turns_spaced_by_the_penalty() -> None:
    time = VirtualTime()
    th = throttle(time, step=0.5, max_delay=10.0)
    starts: list[tuple[str, float]] = []
    # Five sessions of one client guess at once; each check takes 0.25 s.
    asyncio.run(time.run(*(attempt(th, time, A, False, starts, 0.25) for _ in range(5))))
    times = [t for _, t in starts]
    # One at a time, each the delay its predecessors' failures earned (0.5, 1.0, 1.5,
    # 2.0 s) after the previous check ended (0.25 s after it started).
    assert times == [0.0, 0.75, 2.0, 3.75, 6.0]
    assert th.failures(A) == 5
    assert th.priority(A) == SUSPECT


def test_the_same_attempts_in_one_session_are_no_slower() -> None:
    """The parallel sessions above gain nothing over one session guessing in sequence."""
    time = VirtualTime()
    th = throttle(time, step=0.5, max_delay=10.0)
    starts: list[tuple[str, float]] = []

    async def sequential() -> None:
        for _ in range(5):
            await attempt(th, time, A, False, starts, 0.25)

    asyncio.run(time.run(sequential()))
    assert [t for _, t in starts] == [0.0, 0.75, 2.0, 3.75, 6.0]


def test_ipv6_neighbours_in_one_64_share_the_penalty() -> None:
    time = VirtualTime()
    th = throttle(time)
    starts: list[tuple[str, float]] = []
    ips = [f"2001:db8:0:7::{n:x}" for n in range(1, 5)]
    asyncio.run(time.run(*(attempt(th, time, ip, False, starts) for ip in ips)))
    assert [t for _, t in starts] == [0.0, 0.5, 1.5, 3.0]
    assert th.failures("2001:db8:0:7::ffff") == 4
    assert th.failures("2001:db8:0:8::1") == 0


def test_another_address_is_not_queued_behind_a_penalised_one() -> None:
    time = VirtualTime()
    th = throttle(time, step=2.0, max_delay=10.0)
    starts: list[tuple[str, float]] = []

    async def scenario() -> None:
        for _ in range(3):  # A has failed three times: its next turn is 6 s away
            await attempt(th, time, A, False, starts, 0.25)
        waiting = [
            asyncio.ensure_future(attempt(th, time, A, False, starts, 0.25)) for _ in range(10)
        ]
        for _ in range(10):
            await asyncio.sleep(0)
        await attempt(th, time, B, True, starts, 0.25)  # B logs in meanwhile
        b_done = time.now
        await asyncio.gather(*waiting)
        starts.append(("B-done", b_done))

    asyncio.run(time.run(scenario()))
    a_before = [t for ip, t in starts[:3]]
    b_start = next(t for ip, t in starts if ip == B)
    b_done = starts[-1][1]
    later_a = [t for ip, t in starts[3:-1] if ip == A]
    assert b_start == a_before[-1] + 0.25  # at once: no wait at all
    assert b_done == b_start + 0.25
    assert len(later_a) == 10 and min(later_a) > b_done  # A's queue came after B
    assert th.priority(B) == KNOWN
    assert th.failures(B) == 0


def test_delay_is_capped_and_forgotten_after_quiet_time() -> None:
    time = VirtualTime()
    th = throttle(time, step=0.5, max_delay=2.0, memory=900.0)
    starts: list[tuple[str, float]] = []

    async def scenario() -> None:
        for _ in range(8):
            await attempt(th, time, A, False, starts)
        assert th.failures(A) == 8
        await time.sleep(899.0)
        assert th.failures(A) == 8
        await time.sleep(2.0)
        assert th.failures(A) == 0
        await attempt(th, time, A, False, starts)

    asyncio.run(time.run(scenario()))
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(starts[:8])]
    assert gaps == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]
    assert starts[-1][1] == starts[7][1] + 899.0 + 2.0  # no wait after forgetting
    assert th.failures(A) == 1


def test_success_halves_the_failures() -> None:
    time = VirtualTime()
    th = throttle(time)
    starts: list[tuple[str, float]] = []

    async def scenario() -> list[int]:
        seen = []
        for _ in range(6):
            await attempt(th, time, A, False, starts)
        for _ in range(3):
            await attempt(th, time, A, True, starts)
            seen.append(th.failures(A))
        return seen

    assert asyncio.run(time.run(scenario())) == [[3, 1, 0]]
    assert th.priority(A) == KNOWN


def test_hanging_up_during_the_check_counts_as_a_failure() -> None:
    time = VirtualTime()
    th = throttle(time)

    async def scenario() -> int:
        started = asyncio.Event()

        async def hangs_up() -> None:
            async with th.turn(A):
                started.set()
                await asyncio.Event().wait()  # the check never reports

        task = asyncio.ensure_future(hangs_up())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return th.failures(A)

    assert asyncio.run(time.run(scenario())) == [1]


def test_hanging_up_while_waiting_for_the_penalty_is_no_failure() -> None:
    time = VirtualTime()
    th = throttle(time)
    starts: list[tuple[str, float]] = []

    async def scenario() -> int:
        await attempt(th, time, A, False, starts)
        task = asyncio.ensure_future(attempt(th, time, A, False, starts))
        for _ in range(10):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return th.failures(A)

    assert asyncio.run(time.run(scenario())) == [1]
    assert len(starts) == 1


def test_memory_is_bounded_when_addresses_rotate() -> None:
    time = VirtualTime()
    th = throttle(time, max_clients=100)
    starts: list[tuple[str, float]] = []
    ips = [f"10.0.{n // 250}.{n % 250}" for n in range(1000)]
    asyncio.run(time.run(*(attempt(th, time, ip, False, starts) for ip in ips)))
    assert len(starts) == 1000
    assert len(th._clients) <= 100
    assert th.failures(ips[-1]) == 1  # the newest are kept


def test_a_success_is_remembered_for_the_memory_period() -> None:
    time = VirtualTime()
    th = throttle(time, memory=10.0)
    starts: list[tuple[str, float]] = []

    async def scenario() -> list[int]:
        await attempt(th, time, A, True, starts)
        seen = [th.priority(A), th.priority(B)]
        await time.sleep(11.0)
        return [*seen, th.priority(A)]

    assert asyncio.run(time.run(scenario())) == [[KNOWN, NEUTRAL, NEUTRAL]]


# --- the bcrypt pool ------------------------------------------------------------------


def test_pool_runs_at_most_size_checks_at_once() -> None:
    running, peak = 0, 0
    lock = threading.Lock()
    release, full = threading.Event(), threading.Event()

    def check(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == 2:
                full.set()
        release.wait(10)
        with lock:
            running -= 1
        return n

    async def scenario() -> list[int]:
        pool = BcryptPool(2)
        jobs = [asyncio.ensure_future(pool.run(NEUTRAL, check, n)) for n in range(6)]
        await asyncio.to_thread(full.wait, 10)
        await asyncio.sleep(0.05)  # time for a third to start, were the pool not bounded
        assert pool.busy == 2 and peak == 2
        release.set()
        return await asyncio.gather(*jobs)

    assert asyncio.run(scenario()) == list(range(6))
    assert peak == 2


def test_pool_admits_known_clients_first_and_suspects_last() -> None:
    gate, running = threading.Event(), threading.Event()
    order: list[str] = []

    def check(name: str) -> None:
        if name == "busy":
            running.set()
            gate.wait(10)
        order.append(name)

    async def scenario() -> None:
        pool = BcryptPool(1)
        busy = asyncio.ensure_future(pool.run(NEUTRAL, check, "busy"))
        await asyncio.to_thread(running.wait, 10)
        queued = [
            asyncio.ensure_future(pool.run(priority, check, name))
            for priority, name in [
                (SUSPECT, "guess1"),
                (NEUTRAL, "new"),
                (SUSPECT, "guess2"),
                (KNOWN, "known"),
            ]
        ]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(busy, *queued)

    asyncio.run(scenario())
    assert order == ["busy", "known", "new", "guess1", "guess2"]


def test_pool_keeps_the_slot_of_a_cancelled_check_until_its_thread_ends() -> None:
    gate = threading.Event()

    async def scenario() -> tuple[int, int]:
        pool = BcryptPool(1)
        first = asyncio.ensure_future(pool.run(NEUTRAL, gate.wait, 10))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0.05)
        still_busy = pool.busy  # the thread still runs: its slot is not handed out
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return still_busy, pool.busy

    assert asyncio.run(scenario()) == (1, 0)


def test_cpu_count_is_positive() -> None:
    assert authlimit.cpu_count() >= 1
