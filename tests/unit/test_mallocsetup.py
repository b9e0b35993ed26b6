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
fixed = mallocsetup.tune() if sys.argv[1] == "fix" else None
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


ARENAS = """
import ctypes, os, re, sys, tempfile, threading
from smtprelay import mallocsetup

if sys.argv[1] == "fix":
    mallocsetup.tune()

together = threading.Barrier(8)

def work():
    kept = [bytes(4096) for _ in range(200)]  # each thread's first malloc picks its arena
    together.wait()  # all alive at once: none finds the arena of one that has ended
    del kept

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    f = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(len(re.findall(r'<heap nr="', open(out.name).read())))
"""


def arenas(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_the_arenas_are_capped_at_two_however_many_threads_allocate() -> None:
    assert arenas("fix") <= 2
    assert arenas("default") > 2  # the same eight threads, glibc's own limit (8 per core)
