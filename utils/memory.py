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

The pin has a price where the same large buffers are made again and again: each is a fresh mapping
whose pages the kernel zeroes and faults in on first touch. ``reused_heap`` lifts the pin for a stretch
of such work (the refinement's windows of one row, all of one shape) and gives the freed memory back
when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
_TRIM_DEFAULT = 128 * 1024  # glibc's M_TRIM_THRESHOLD while the mmap threshold is set by hand
_HEAP_MAX = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit systems
_pinned: int | None = None  # the threshold fix_mmap_threshold set in this process (glibc has no getter)
_lifted = 0  # reused_heap blocks open now
_MADV_DONTNEED = 4  # Linux
_PAGE = 4096


@functools.cache
def _libc():
    """The C library, loaded once: ``find_library`` runs a subprocess, and the callers run per band."""
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


def _mallopt():
    """glibc's ``mallopt``, or None (not Linux, or a C library without it, e.g. musl)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def fix_mmap_threshold(size: int = 1 << 20) -> bool:
    """Serve every allocation of ``size`` bytes or more with its own mapping (glibc only; the process
    keeps this setting). Returns whether it was applied (False on other C libraries)."""
    global _pinned
    mallopt = _mallopt()
    if mallopt is None or not mallopt(_M_MMAP_THRESHOLD, int(size)):
        return False
    _pinned = int(size)
    return True


def give_back_heap() -> bool:
    """Return the free pages of glibc's heap to the system (``malloc_trim``), wherever they lie in it.

    Blocks under the mmap threshold (the many small and mid-sized buffers of merging a band, labelling
    and polygonizing it, encoding it) are freed into the heap, where they stay resident until a later
    allocation reuses them; between the bands of a scene that is tens of megabytes held through the
    next forward. Costs one walk over the heap's free blocks per call. Returns whether
    it ran (False on other C libraries)."""
    libc = _libc() if sys.platform.startswith("linux") else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


@contextlib.contextmanager
def reused_heap() -> Iterator[None]:
    """While ``fix_mmap_threshold`` pins the threshold, serve allocations of up to 32 MB from glibc's heap
    inside the block and keep what is freed there, so that buffers made again and again reuse the same
    memory instead of fresh mappings; on leaving, the pin is restored and the freed memory is given
    back to the system (``malloc_trim``). Does nothing when no pin is set (glibc's own dynamic threshold
    already reuses freed blocks) or on other C libraries; a block inside another one leaves the setting
    to the outer block. The setting is the process's: other threads' allocations follow it too."""
    global _lifted
    mallopt = _mallopt() if _pinned is not None and _pinned < _HEAP_MAX else None
    outer = mallopt is not None and not _lifted  # only the outermost block changes the setting
    if outer:
        mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        mallopt(_M_MMAP_THRESHOLD, _HEAP_MAX)
    _lifted += 1
    try:
        yield
    finally:
        _lifted -= 1
        if outer:
            mallopt(_M_MMAP_THRESHOLD, _pinned)
            mallopt(_M_TRIM_THRESHOLD, _TRIM_DEFAULT)
            give_back_heap()
