"""Pacer: within a slice callers go on at once; once it is used up, every caller of
that pass of the loop waits for the next pass, where a new slice begins."""

from __future__ import annotations

import asyncio

from smtprelay.delivery.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_callers_within_a_slice_do_not_yield() -> None:
    clock = Clock()
    pacer = Pacer(0.02, clock)

    async def main() -> list[str]:
        order: list[str] = []

        async def worker(name: str) -> None:
            await pacer.turn()
            order.append(name)

        async def other() -> None:
            order.append("other")

        # Scheduled first, but the workers' turns do not suspend them: they finish
        # in the pass that started them, before "other" gets its turn.
        first = asyncio.create_task(worker("a"))
        second = asyncio.create_task(worker("b"))
        await asyncio.sleep(0)
        await other()
        await asyncio.gather(first, second)
        return order

    assert asyncio.run(main()) == ["a", "b", "other"]


def test_a_spent_slice_lets_the_loop_run_before_more_work() -> None:
    clock = Clock()
    pacer = Pacer(0.02, clock)
    passes: list[int] = []

    async def main() -> list[tuple[str, int]]:
        done: list[tuple[str, int]] = []
        current = [0]

        def tick() -> None:
            # One callback per pass of the loop, standing in for sockets and timers.
            current[0] += 1
            passes.append(current[0])
            if current[0] < 50:
                asyncio.get_running_loop().call_soon(tick)

        async def worker(name: str) -> None:
            await pacer.turn()
            clock.now += 0.015  # CPU work of 15 ms
            done.append((name, current[0]))

        asyncio.get_running_loop().call_soon(tick)
        await asyncio.gather(*(worker(str(i)) for i in range(6)))
        return done

    done = asyncio.run(main())
    assert sorted(name for name, _ in done) == [str(i) for i in range(6)]
    # A slice of 20 ms holds two 15 ms steps (the second starts within it): at most
    # two workers run in one pass, and every pass after the first lets tick run.
    per_pass: dict[int, int] = {}
    for _, seen in done:
        per_pass[seen] = per_pass.get(seen, 0) + 1
    assert max(per_pass.values()) == 2, done
    assert len(per_pass) == 3, done
