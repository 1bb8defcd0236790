"""Generators whose every step runs under a context such as ``torch.inference_mode``.

torch's ``no_grad`` and ``inference_mode`` decorators accept a generator function and enter the
mode around each step, so that the consumer's code between items keeps its own mode; but the
decorator's loop keeps the item it handed out until the next one is made. For generators of large
items (the predictor's bands) that is one item too many in memory. ``stepwise`` does the same
without keeping it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

T = TypeVar("T")
_END = object()


def stepwise(items: Iterator[T], context: Callable[[], AbstractContextManager]) -> Iterator[T]:
    """``items``, each made (the work up to it) inside a fresh ``context()``; the consumer's code runs
    outside it. An item is referenced only by the consumer once handed out. Closing the result closes
    ``items``."""
    try:
        while True:
            with context():
                item = next(items, _END)
            if item is _END:
                return
            yield item
            del item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
