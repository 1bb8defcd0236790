"""Process memory settings: glibc's mmap threshold for long streaming runs, and dropping the pages of
memory-mapped checkpoint tensors once a copy replaces them.

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
_MADV_DONTNEED = 4  # Linux
_PAGE = 4096


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def release_file_pages(tensor) -> bool:
    """Let the kernel drop the resident pages under a CPU tensor that is memory-mapped from a file and
    was only ever read (a checkpoint loaded with ``mmap=True``), e.g. once a copy in another memory
    format replaces it. Reading the tensor again re-reads the file, so its values do not change; the
    pages at both ends, which other tensors may share, are kept. Never use it on memory that was
    written (anonymous memory would read back as zeros). Linux only; returns whether it was done."""
    if not sys.platform.startswith("linux") or tensor.device.type != "cpu":
        return False
    libc = _libc()
    if libc is None:
        return False
    start = tensor.data_ptr()
    first = -(-start // _PAGE) * _PAGE
    last = (start + tensor.numel() * tensor.element_size()) // _PAGE * _PAGE
    if last <= first:
        return False
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) == 0


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
