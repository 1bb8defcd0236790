"""Error types for mistakes a user can fix.

Each carries one line that names the offending file or option and says what to do. The entry script
prints it as ``error: <message>`` and exits with status 2 (``exit_code``) instead of showing a traceback,
because a wrong path or a truncated download is not a bug in this code.
"""

from __future__ import annotations

import sys


class FCtLError(Exception):
    """Base class: a user-facing, one-line problem description."""

    exit_code = 2


class DataError(FCtLError):
    """An image, mask, folder or split list that cannot be used as it is."""


class CheckpointError(FCtLError):
    """A checkpoint file that is unreadable or does not fit the requested model."""


class OptionError(FCtLError):
    """A command-line option value that cannot work."""


class ResourceError(FCtLError):
    """The machine ran out of something (GPU memory) with the chosen options."""


class Interrupted(FCtLError):
    """The user stopped the run (Ctrl-C); the message says what is on disk."""

    exit_code = 130


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


def report_error(exc: FCtLError) -> int:
    """Print ``exc`` as the one ``error: ...`` line on stderr; returns the exit status to use."""
    print(f"error: {user_message(exc)}", file=sys.stderr)
    return exc.exit_code
