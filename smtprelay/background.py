"""Threads of background work yield the CPU to the event loop: an initializer for them.

The main process's event loop answers SMTP hand-offs, ``/healthz``, ``/metrics`` and
API requests; beside it, threads read the queue at start-up (``spool-load``) and rewrite
and remove queue files for the deliveries (``delivery-io``). On a small machine they
compete with the loop for the cores, and with a million messages queued for a dead
smarthost (a load and ~700 rewrites a second, each with its fsync) the loop waited for a
core (CPU pressure 47 %): the loop's worst lag was 83 and 117 ms in two runs of
``bench/queue_scale.py --messages 1000000 --observe 600``, and 34-63 ms in three with
these threads ten nice levels below the loop, about as much queue work done
(bench/README.md; ``/healthz`` and ``/metrics`` spread too widely between runs on that
machine to credit or blame this for them). Their work is not
urgent -- an attempt's rewrite waits in the same line either way -- while the loop's is
what every client waits for. Threads that sit on a client's reply (the intake's fsyncs)
keep the loop's priority, and so does the event store's: a stop waits for its backlog,
and one run with it lowered took 34 s to stop.

Linux applies ``setpriority`` to the one thread (task) whose ID it is given; elsewhere,
or where it is refused, the thread keeps the process's priority.
"""

from __future__ import annotations

import os
import threading

# Nice levels below the process's own (each level is ~10% less CPU under contention).
LOWER_BY = 10
LOWEST = 19


def lower_priority() -> None:
    """Lower the calling thread's CPU priority (a ThreadPoolExecutor initializer)."""
    me = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, me)
        os.setpriority(os.PRIO_PROCESS, me, min(LOWEST, now + LOWER_BY))
    except OSError:
        pass  # not Linux's per-thread semantics, or not allowed: the process's priority
