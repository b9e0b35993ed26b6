"""A large table freed and another allocated: with the threshold fixed the new one gets a
mapping of its own (given back to the kernel when freed); glibc's adaptive threshold
would have put it in the heap. Each case runs in a fresh interpreter, since the setting
is for the life of a process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's"
)

PROBE = """
import ctypes, json, sys
from smtprelay import mallocsetup

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
fixed = mallocsetup.fix_mmap_threshold() if sys.argv[1] == "fix" else None
first = bytearray(20 << 20)  # mapped, and on free the adaptive threshold rises to 20 MiB
del first
table = bytearray(10 << 20)  # a table that grew, say
print(json.dumps({"fixed": fixed, "mapped": mallinfo2().hblkhd}))
"""


def probe(mode: str) -> dict[str, int | bool | None]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    result: dict[str, int | bool | None] = json.loads(done.stdout)
    return result


def test_with_the_threshold_fixed_a_large_block_is_mapped_on_its_own() -> None:
    result = probe("fix")
    assert result["fixed"] is True
    assert isinstance(result["mapped"], int) and result["mapped"] >= 10 << 20


def test_without_it_glibc_puts_the_same_block_in_the_heap() -> None:
    result = probe("default")
    assert isinstance(result["mapped"], int) and result["mapped"] < 10 << 20
