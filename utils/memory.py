"""Process memory settings for long streaming runs.

glibc's malloc serves allocations above its mmap threshold with fresh mappings that go back to the
system when freed, and smaller ones from its heap. The threshold is dynamic: each time a mapped block
is freed it is raised to that block's size, up to 32 MB, so after the first few large tensors almost
every window, crop and activation of the pipeline comes from the heap. Freed heap blocks of varying
sizes fragment it and are not returned, and the resident memory of a run over a large scene then
creeps up band after band (measured: from 170 MB to 480 MB over the first five bands of a 4096 px
scene, flat at 170 MB with the fixed threshold; docs/scenes.md). ``fix_mmap_threshold`` pins the
threshold, which also switches the dynamic raise off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def fix_mmap_threshold(size: int = 1 << 20) -> bool:
    """Serve every allocation of ``size`` bytes or more with its own mapping (glibc only; the process
    keeps this setting). Returns whether it was applied (False on other C libraries)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(size)))
