"""The daemon's processes as /proc shows them: children, command lines, liveness."""

from __future__ import annotations

import os


def children(pid: int) -> list[int]:
    """The children of ``pid``'s main thread (those it started itself)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, started by any of its threads."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    below = [int(c) for c in f.read().split()]
            except FileNotFoundError:
                continue
            found += below
            todo += below
    return found


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def alive(pid: int) -> bool:
    """Running, not exited nor a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
