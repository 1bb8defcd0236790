"""glibc's malloc statistics for the tests that measure what a step leaves allocated (in this process)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``: the main arena's figures and the blocks malloc mapped on its own."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def glibc_malloc() -> bool:
    """Whether this process's C library is glibc with ``mallinfo2`` (Linux, glibc 2.33 or later)."""
    name = ctypes.util.find_library("c")
    return sys.platform.startswith("linux") and name is not None and hasattr(ctypes.CDLL(name), "mallinfo2")


def malloc_in_use() -> int:
    """Bytes malloc hands out now from the main arena and from its own mappings."""
    mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd
