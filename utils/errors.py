"""Error types for problems a user can fix.

Each carries one line that names the offending file or setting and says what to do. A setting is
written in backticks under the name the library takes it by (`size_p`, `pre_path`, `skip_bad`): a
library caller reads the keyword they passed, and a front end shows the same message under its own
names (the command line turns `size_p` into ``--size_p``) with ``render``. Exit statuses and flag
names belong to the command line, not here.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Sequence

_SETTING = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class FCtLError(Exception):
    """Base class: a user-facing, one-line problem description."""


class DataError(FCtLError):
    """An image, mask, folder, split list or output file that cannot be used or written as it is."""


class InputFileError(DataError):
    """An input file (image, mask, scene) that is missing or cannot be read or used as it is; ``path``
    names it, so that a caller can tell a bad input from a failed output without reading the message."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path  # None when re-raised from a DataLoader worker, which passes the message only


class CheckpointError(FCtLError):
    """A checkpoint file that is unreadable or does not fit the requested model."""


class ConfigError(FCtLError):
    """A setting (patch size, mode, device, ...) whose value cannot work."""


class ResourceError(FCtLError):
    """The machine ran out of something (memory, disk) with the chosen settings."""


class TrainingFault(FCtLError):
    """Training cannot go on (non-finite loss or weights, out of memory); the last good checkpoint is kept."""


class Interrupted(FCtLError):
    """The run was stopped by a signal (Ctrl-C, or SIGTERM / SIGHUP from a scheduler or a closed
    terminal); the message says what is on disk. ``signum`` is the signal's number."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM or SIGHUP arrives (see ``utils.workers.stop_on_signals``),
    so every ``except KeyboardInterrupt`` that handles Ctrl-C handles them the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (SIGINT for a plain Ctrl-C)."""
    return getattr(exc, "signum", signal.SIGINT)


def describe_signal(signum: int) -> str:
    """'Ctrl-C' for SIGINT, else the signal's name (SIGTERM, SIGHUP)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def render(message: str, rename: Callable[[str], str]) -> str:
    """``message`` with every backticked setting name replaced by ``rename(name)``."""
    return _SETTING.sub(lambda match: rename(match.group(1)), message)


_WORKER_PREFIX = "Caught "
_WORKER_MARK = "Original Traceback"


def user_message(exc: BaseException) -> str:
    """The one-line message of ``exc``, also when a DataLoader worker raised it.

    torch re-raises an exception from a worker process as the same type, but its message becomes
    "Caught DataError in DataLoader worker process 0. Original Traceback ..." followed by the whole
    worker traceback; the original message is the text after the type name on its last line.
    """
    text = str(exc)
    if not (text.startswith(_WORKER_PREFIX) and _WORKER_MARK in text):
        return text
    last = text.rstrip().splitlines()[-1]
    for name in (f"{type(exc).__module__}.{type(exc).__qualname__}", type(exc).__qualname__):
        if last.startswith(name + ": "):
            return last[len(name) + 2:]
    return last.split(": ", 1)[-1]


_SEE_CAUSE = "See previous exception"


_NATIVE_PREFIX = re.compile(r"^(?:(?:ERROR|Warning) \d+: )?(?:[A-Za-z_]\w*: )?")


def reason(exc: BaseException, diagnostics: Sequence[str] = ()) -> str:
    """The first line of what went wrong in ``exc``, for the parenthesis of a one-line message.

    ``diagnostics``: what native libraries printed meanwhile (``utils.logging.native_diagnostics``);
    the last of those lines, without its "function: " prefix, wins, since libtiff says "No space left on
    device" there while the exception only says that a write failed. Otherwise an ``OSError`` gives its
    ``strerror``, and rasterio's "Read failed. See previous exception for details." gives way to GDAL's
    own error, its cause, so the message names the real culprit (a missing VRT source, a damaged tile)."""
    lines = [line.strip() for line in diagnostics if line.strip()]
    if lines:
        return _NATIVE_PREFIX.sub("", lines[-1]).rstrip(".")
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        lines = str(exc).strip().splitlines()
        cause = exc.__cause__ or exc.__context__
        if cause is not None and (not lines or _SEE_CAUSE in lines[0]):
            exc = cause
            continue
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        return lines[0] if lines else type(exc).__name__
    return type(exc).__name__
