"""Stopping cleanly: DataLoader workers that end with the loop over them, and termination signals.

When an error (a bad image, Ctrl-C, a signal) leaves a loop over a multi-process DataLoader, its
iterator stays referenced by the traceback and is only collected later; torch then stops its workers
with timeouts (seconds per worker), and until then they linger. ``iterate`` stops them at once, with
torch's own shutdown, as soon as an exception passes. Workers ignore SIGTERM and SIGHUP
(``worker_init``): a scheduler that signals every process of the job then leaves the stopping to the
main process, which shuts them down.

``stop_on_signals`` makes SIGTERM (Slurm, Kubernetes, ``timeout``) and SIGHUP (a closed terminal)
raise ``StopSignal``, a KeyboardInterrupt, in the main thread: every path that handles Ctrl-C (keep
the last checkpoint, say how to resume, stop the workers) handles them too. A lack of shared memory
in the workers (``/dev/shm``, 64 MB in Docker by default) becomes one ResourceError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator

from utils.errors import ResourceError, StopSignal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
SHM = "/dev/shm"


@contextlib.contextmanager
def iterate(loader: Iterable) -> Iterator[Iterator]:
    """``with iterate(loader) as items: for item in items: ...``; on an exception the workers stop first."""
    workers = getattr(loader, "num_workers", 0) > 0
    try:
        iterator = iter(loader)  # starts the workers and their queues (semaphores in shared memory)
    except OSError as exc:
        if workers and exc.errno == errno.ENOSPC:
            raise _shared_memory_error() from None
        raise
    try:
        yield iterator
    except BaseException as exc:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # what the iterator's __del__ would call
        if shutdown is not None:
            shutdown()
        if workers and isinstance(exc, (RuntimeError, OSError)) and out_of_shared_memory(exc):
            raise _shared_memory_error() from None
        raise


def _shared_memory_error(need_mb: float | None = None) -> ResourceError:
    need = f"; about {need_mb:.0f} MB are needed" if need_mb else ""
    return ResourceError(f"the image-reading workers ran out of shared memory ({SHM} has {free_mb(SHM):.1f} MB "
                         f"free{need}); pass `num_workers` 0, or give the machine or container more (e.g. docker "
                         f"run --shm-size=2g)")


def check_shared_memory(num_workers: int, items_in_flight: int, item_bytes: int) -> None:
    """Before workers start: ResourceError unless ``/dev/shm`` holds the items they hand over at once.

    Checked up front because a worker that runs out of shared memory while handing over an item can
    fail in a thread of its own, and the item then never arrives (the run would wait forever)."""
    if num_workers <= 0 or item_bytes <= 0 or not os.path.isdir(SHM):
        return
    need_mb = 1.25 * items_in_flight * item_bytes / 2**20 + 1  # + queues and semaphores
    if free_mb(SHM) < need_mb:
        raise _shared_memory_error(need_mb)


def out_of_shared_memory(exc: BaseException) -> bool:
    """Whether a DataLoader error is torch's report of a full or too small shared memory."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc)
    if "No space left on device" in text and ("torch_" in text or "shared memory" in text):
        return True
    return "DataLoader worker" in text and ("shared memory" in text or "Bus error" in text)


def free_mb(path: str) -> float:
    """Free space of the file system holding ``path``, in MB (0 when it cannot be read)."""
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return 0.0


def worker_init(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: leave SIGTERM and SIGHUP to the main process (see the module doc)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``StopSignal`` in the main thread (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise StopSignal(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
