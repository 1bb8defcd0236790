"""Error types for mistakes a user can fix.

Each carries one line that names the offending file or option and says what to do. The entry script
prints it as ``error: <message>`` and exits with status 2 instead of showing a traceback, because a wrong
path or a truncated download is not a bug in this code.
"""


class FCtLError(Exception):
    """Base class: a user-facing, one-line problem description."""


class DataError(FCtLError):
    """An image, mask, folder or split list that cannot be used as it is."""


class CheckpointError(FCtLError):
    """A checkpoint file that is unreadable or does not fit the requested model."""


class OptionError(FCtLError):
    """A command-line option value that cannot work."""
