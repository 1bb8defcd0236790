"""Crash-safe file writing.

Every output of this project (checkpoints, predictions, metrics) is written to a temporary file in the
destination folder and renamed over the target only once it is complete and flushed to disk. A kill,
a crash or a full disk at any moment leaves either the previous good file or none, never a truncated
one. The rename is atomic because source and target are in the same folder (same file system).

A SIGKILL or power cut during a write can leave the temporary file behind. Its name is the final name
plus ``.<random>.tmp`` (e.g. ``run.last.pth.k2j3h4x1.tmp``), so nothing that looks for ``*.pth`` or
``*_mask.png`` ever picks it up; ``remove_stale_temporaries`` deletes such leftovers when the next run
starts.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import IO

from utils.errors import DataError, ResourceError, reason

TEMP_SUFFIX = ".tmp"
TEMP_SUFFIX_GLOB = ".*" + TEMP_SUFFIX  # what atomic_open appends to the final name: ".<random>.tmp"


MIN_FREE_MB = 16  # what an output folder must have free at the start (a log, a few masks)


def ensure_writable_dir(path: str, setting: str, min_free_mb: float = MIN_FREE_MB) -> str:
    """Create ``path`` if needed and check that files can be created in it and that its disk has
    ``min_free_mb`` free (cheap now, and a full disk would otherwise show only after hours of work);
    ``setting`` names the caller's setting that gave the path (e.g. "prediction_path"), for the message."""
    option = f"`{setting}`"
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{option} {path} is a file, not a folder; pass a folder (it is created if missing)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {path} ({exc.strerror}); pass a writable {option}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataError(f"output folder {path} is not writable; pass a writable {option} or fix its permissions")
    ensure_free_space(path, min_free_mb, setting)
    return path


def ensure_free_space(path: str, need_mb: float, setting: str, what: str = "") -> None:
    """ResourceError unless the disk holding ``path`` has ``need_mb`` MB free (``what`` says for what)."""
    free = shutil.disk_usage(path).free / 2**20
    if free < need_mb:
        purpose = f" for {what}" if what else ""
        raise ResourceError(f"the disk of `{setting}` {path} has {free:.1f} MB free, less than the {need_mb:.0f} MB "
                            f"needed{purpose}; free space there or pass another `{setting}`")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary sibling path (also for writers that open files by name, such as GDAL); when the
    block succeeds the file is fsynced and renamed to ``path``, when it fails it is deleted."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise DataError(f"cannot write {path}: a folder has that name; rename or remove the folder, or write "
                        f"elsewhere")
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise DataError(f"cannot write {path} ({exc.strerror}); check that {folder} exists and is writable") from None
    try:
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        os.close(fd)
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
        _sync_folder(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (the folder entry), where the platform allows it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_error(path: str, exc: BaseException, diagnostics: Sequence[str] = ()) -> DataError:
    """The one line for a file that could not be written: its name, its folder and why (``reason``)."""
    folder = os.path.dirname(os.path.abspath(path))
    return DataError(f"cannot write {os.path.basename(path)} into folder {folder} ({reason(exc, diagnostics)}); "
                     f"choose a writable folder with free space")


@contextlib.contextmanager
def scratch_path(path: str) -> Iterator[str]:
    """A scratch file name (next to an ``atomic_path`` temporary: ``<temporary>.<ext>``, for writers that
    need a format's own extension) that is removed afterwards, whatever happens."""
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def remove_stale_temporaries(folder: str, pattern: str) -> list[str]:
    """Delete the temporaries that interrupted ``atomic_open`` writes left in ``folder`` for final names
    matching the glob ``pattern`` (e.g. ``run.*.pth``); returns the removed paths.

    Call it only where no other process is writing such a file at the same moment (e.g. on rank 0
    before the other processes start writing).
    """
    removed = []
    found = {*glob.glob(os.path.join(glob.escape(folder), pattern + TEMP_SUFFIX_GLOB)),
             *glob.glob(os.path.join(glob.escape(folder), pattern + TEMP_SUFFIX_GLOB + ".*"))}  # and their scratch files
    for path in sorted(found):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


def atomic_write(path: str, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call ``write(handle)`` on a temporary file and publish it as ``path`` only when it succeeded."""
    with atomic_open(path, mode) as handle:
        write(handle)
