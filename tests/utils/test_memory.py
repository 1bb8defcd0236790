"""glibc's mmap threshold: the pin for streaming runs, and the blocks that lift it for repeated buffers.

Each case runs in a fresh interpreter: the setting is the process's, and pytest's own allocations would
blur the heap figures.
"""

import os
import subprocess
import sys

import pytest

from tests.malloc_info import glibc_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PROBE = """
import ctypes, ctypes.util, json, os
from tests.malloc_info import MallInfo2
from utils.memory import fix_mmap_threshold, reused_heap

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 8 << 20

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def own_mapping():
    '''Whether an 8 MB block, written to, is a mapping of its own (else it came from the heap).'''
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    mapped = libc.mallinfo2().hblkhd - before >= SIZE
    libc.free(block)
    return mapped

out = {"pinned": PIN and fix_mmap_threshold(), "before": own_mapping()}
with reused_heap():
    out["inside"] = own_mapping()
    with reused_heap():
        out["nested"] = own_mapping()
    out["after_nested"] = own_mapping()
    out["kept_mb"] = libc.mallinfo2().fordblks / 2**20
    inside_rss = rss()
out["after"] = own_mapping()
out["given_back_mb"] = (inside_rss - rss()) / 2**20
print(json.dumps(out))
"""


def _probe(pin: bool) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", _PROBE.replace("PIN", str(pin))], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


pytestmark = pytest.mark.skipif(not glibc_malloc(), reason="glibc's malloc (mallinfo2) only")


def test_a_lifted_block_serves_large_buffers_from_the_heap_and_gives_them_back():
    r = _probe(pin=True)
    assert r["pinned"] and r["before"]  # the pin: an 8 MB buffer is a mapping of its own
    assert not r["inside"] and not r["nested"]  # lifted: it comes from the heap
    assert not r["after_nested"]  # an inner block leaves the setting to the outer one
    assert r["kept_mb"] >= 8  # and its memory stays there for the next buffer of the block
    assert r["after"]  # the pin is back
    assert r["given_back_mb"] >= 7  # and the freed heap memory went back to the system


def test_without_a_pin_a_block_changes_nothing():
    r = _probe(pin=False)
    assert not r["pinned"]
    # glibc's dynamic threshold: the first 8 MB buffer is mapped, and its release raises the threshold
    # above 8 MB, so the next ones come from the heap, inside a block or not.
    assert r["before"] and not r["inside"] and not r["after"]


_HOLES = """
import ctypes, ctypes.util, json, os
from utils.memory import fix_mmap_threshold, give_back_heap

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

fix_mmap_threshold()
# 24 MB of 64 kB heap blocks, written to; all are freed but the last, which keeps the heap's top in
# place, so glibc's own trimming (from the top only) cannot give the freed memory back.
blocks = [libc.malloc(64 << 10) for _ in range(384)]
for block in blocks:
    ctypes.memset(block, 1, 64 << 10)
for block in blocks[:-1]:
    libc.free(block)
held = rss()
ran = TRIM and give_back_heap()
print(json.dumps({"ran": bool(ran), "given_back_mb": (held - rss()) / 2**20}))
"""


def _holes(trim: bool) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", _HOLES.replace("TRIM", str(trim))], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def test_give_back_heap_returns_freed_memory_below_the_heaps_top():
    assert _holes(trim=False)["given_back_mb"] < 4  # freed heap blocks stay resident by themselves
    r = _holes(trim=True)
    assert r["ran"] and r["given_back_mb"] >= 16
