"""DataLoader worker processes that stop when the loop over them fails.

When an error (a bad image, Ctrl-C, a signal) leaves a loop over a multi-process DataLoader, its
iterator stays referenced by the traceback and is only collected later; torch then stops its workers
with timeouts (seconds per worker), and until then they linger. ``iterate`` stops
them at once, with torch's own shutdown, as soon as an exception passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def iterate(loader: Iterable) -> Iterator[Iterator]:
    """``with iterate(loader) as items: for item in items: ...``; on an exception the workers stop first."""
    iterator = iter(loader)
    try:
        yield iterator
    except BaseException:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # what the iterator's __del__ would call
        if shutdown is not None:
            shutdown()
        raise
