"""glibc's allocator told to hand large blocks back to the kernel when they are freed,
and to keep few arenas.

A large queue lives in a few big tables in the main process (the schedule's heap and
dicts, the ledger's dict and orders: 8-40 MB each with a million messages), and each
grows by allocating a bigger table and freeing the old one. glibc serves a block above
its mmap threshold (128 KiB at first) with a mapping of its own and unmaps it when it is
freed -- but the threshold adapts: every freed mapping raises it to that block's size
(up to 32 MiB), so the next tables come from the heap instead, and the old ones leave
holes that the process keeps. With 1,000,000 queued that was 60-80 MB of a main process
of about 560 MB (bench/README.md, "1,000,000 queued"). Setting the threshold also stops
its adapting: every block from THRESHOLD up is mapped and unmapped on its own, as at
start. 1 MiB: above every buffer of an ordinary message, so SMTP and HTTP traffic keep
reusing heap memory; only tables of tens of thousands of entries and messages over a
megabyte take a mapping of their own.

The number of arenas is capped at ARENAS too. glibc gives each thread that meets a
busy arena one of its own (up to eight per core); the delivery stage's spool threads,
the start-up loader and the event store's thread each kept freed space in theirs, and
with the queue deferring for four minutes that was about 35 MB more (main process 488
against 453 MiB with ``MALLOC_ARENA_MAX=2``, bench/README.md). Their allocations are
short (a file's bytes, a parse), so sharing two arenas costs them little.

Nothing here is needed for correctness: on another C library, or if the call fails, the
daemon runs as before.
"""

from __future__ import annotations

import ctypes
import logging

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
M_ARENA_MAX = -8
THRESHOLD = 1 << 20
ARENAS = 2

log = logging.getLogger("smtprelay")


def tune(threshold: int = THRESHOLD, arenas: int = ARENAS) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes and cap its arenas at
    ``arenas`` (before the daemon starts its threads); False where that is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_ARENA_MAX, arenas))
    if not done:
        log.debug("malloc: the mmap threshold or arena cap could not be set")
    return done
