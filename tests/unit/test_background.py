"""Background threads run ten nice levels below the thread that started them (Linux
applies setpriority to one thread), and the caller keeps its own priority."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from smtprelay import background


def _own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_background_thread_is_lowered_and_the_loop_thread_is_not() -> None:
    before = _own_priority()
    with ThreadPoolExecutor(1, initializer=background.lower_priority) as pool:
        lowered = pool.submit(_own_priority).result()
    with ThreadPoolExecutor(1) as pool:
        plain = pool.submit(_own_priority).result()
    assert lowered == min(background.LOWEST, before + background.LOWER_BY)
    assert plain == before
    assert _own_priority() == before


def test_lowering_stops_at_the_lowest_priority() -> None:
    def lowered_thrice() -> int:
        for _ in range(3):
            background.lower_priority()
        return _own_priority()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(lowered_thrice).result() == background.LOWEST
