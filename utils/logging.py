"""Logging that plays well with progress bars, batch systems and several processes.

Only rank 0 prints INFO; other ranks print warnings and errors, prefixed with their rank, so a
multi-GPU run reads like a single one. Messages go through ``tqdm.write`` so they never tear a bar.

Progress (``progress``): a tqdm bar when stderr is a terminal; when it is a file or a pipe (nohup,
Slurm, CI) plain lines instead, one when the work starts and one each time another few percent are
done, so a log holds a dozen readable lines rather than thousands of carriage-return redraws.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from tqdm import tqdm

from utils.errors import render

LOGGER_NAME = "fctl"
PACKAGES = ("dataset", "engine", "models", "pipeline", "utils")


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


class _LogFile(logging.FileHandler):
    """A log file that a full disk or a vanished folder cannot stop the run with: on the first failed
    write it closes, says so once on the console and leaves the logger (the console keeps logging)."""

    def handleError(self, record: logging.LogRecord) -> None:
        root = logging.getLogger(LOGGER_NAME)
        root.removeHandler(self)
        error = sys.exc_info()[1]
        with contextlib.suppress(Exception):
            self.close()
        root.warning(f"the log file {self.baseFilename} stopped ({error}); logging goes on here only: "
                     f"free space in `log_path` to keep it")


class SafeWriter:
    """tensorboardX's SummaryWriter, except that a failure to write (a full disk, a removed folder)
    costs the tensorboard logs, not the run: it is said once as a warning and later calls do nothing.

    tensorboardX writes from a thread of its own, where such a failure would print a thread traceback,
    block the next calls on its full queue and then the interpreter's exit on that queue; the thread's
    exception is caught here (through ``threading.excepthook`` while the writer is open), turned into
    the same one warning, and the queue is released.
    """

    def __init__(self, logdir: str, **kwargs: Any) -> None:
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        self.failed: BaseException | None = None
        self._previous_hook = threading.excepthook
        try:
            self._writer = SummaryWriter(logdir, **kwargs)
        except Exception as error:  # e.g. no room for its queue's semaphore in /dev/shm
            self._fail(error)
            return
        threading.excepthook = self._thread_failed

    def _thread_failed(self, args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_EventLoggerThread" and args.exc_value is not None:
            self._fail(args.exc_value)
            return
        self._previous_hook(args)

    def _fail(self, error: BaseException) -> None:
        if self.failed is None:
            self.failed = error
            # Its writer thread is gone: let the process exit without waiting for that thread's queue.
            writer = getattr(getattr(self, "_writer", None), "file_writer", None)
            queue = getattr(getattr(writer, "event_writer", None), "_event_queue", None)
            if hasattr(queue, "cancel_join_thread"):
                queue.cancel_join_thread()
            get_logger().warning(f"tensorboard logs in {self.logdir} stopped ({error}); training goes on: free "
                                 f"space in `log_path` to keep them")

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        if self.failed is not None:
            return
        try:
            getattr(self._writer, name)(*args, **kwargs)
        except Exception as error:  # whatever the writer raises, the run goes on
            self._fail(error)

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        self._call("add_scalar", *args, **kwargs)

    def add_image(self, *args: Any, **kwargs: Any) -> None:
        self._call("add_image", *args, **kwargs)

    def close(self) -> None:
        if threading.excepthook == self._thread_failed:
            threading.excepthook = self._previous_hook
        if self.failed is None:  # after a failure, closing would flush (and fail) again or wait on the queue
            self._call("close")


class _RenamingFormatter(logging.Formatter):
    """Shows backticked setting names in messages under the front end's names (see utils.errors)."""

    def __init__(self, fmt: str, rename: Callable[[str], str] | None) -> None:
        super().__init__(fmt)
        self.rename = rename

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if self.rename is None else render(text, self.rename)


def setup_logging(rank: int = 0, log_file: str | None = None,
                  rename: Callable[[str], str] | None = None) -> logging.Logger:
    """Configure the project's logger once per process; optionally also append to ``log_file``.

    ``rename`` maps the backticked setting names in messages to the caller's names (the command line
    passes its flags)."""
    root = logging.getLogger(LOGGER_NAME)
    root.handlers.clear()
    root.setLevel(logging.INFO)
    root.propagate = False
    prefix = "" if rank == 0 else f"[rank {rank}] "
    console = _TqdmHandler()
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(_RenamingFormatter(prefix + "%(message)s", rename))
    root.addHandler(console)
    if log_file is not None and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = _LogFile(log_file)
        handler.setFormatter(_RenamingFormatter("%(asctime)s %(levelname)s %(message)s", rename))
        root.addHandler(handler)
    # Modules log through children of this logger ("fctl.data", ...); route the packages' own
    # loggers here too so their warnings are not lost when they use logging.getLogger(__name__).
    for package in PACKAGES:
        child = logging.getLogger(package)
        child.handlers = root.handlers
        child.setLevel(logging.INFO)
        child.propagate = False
    _route_library_loggers()
    _route_runtime_warnings()
    return root


_NATIVE_LOCK = threading.RLock()
LIBRARY_LOGGERS = ("rasterio", "pyogrio", "fiona")


def _route_library_loggers() -> None:
    """GDAL's warnings and errors reach Python through rasterio's and pyogrio's loggers; without a
    handler Python would print them raw on stderr. They go to the project's log at debug level: what
    matters of them is folded into the project's own messages (``utils.errors.reason``)."""
    forward = _DebugForward()
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers = [forward]
        library.propagate = False


def _route_runtime_warnings() -> None:
    """numpy's floating-point diagnostics (``RuntimeWarning``: invalid value in a cast, overflow) go to
    the log at debug level instead of being printed with their source line; other warnings are shown
    as before."""
    previous = warnings.showwarning
    if getattr(previous, "routes_runtime_warnings", False):
        return

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RuntimeWarning):
            get_logger("native").debug("%s:%d: %s: %s", filename, lineno, category.__name__, message)
            return
        previous(message, category, filename, lineno, file, line)

    show.routes_runtime_warnings = True
    warnings.showwarning = show


_COLLECTORS = threading.local()


class _DebugForward(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        for collected in getattr(_COLLECTORS, "stack", ()):
            if record.levelno >= logging.WARNING:
                collected.append(record.getMessage())
        get_logger("native").debug("%s: %s", record.name, record.getMessage())


@contextlib.contextmanager
def library_warnings() -> Iterator[list[str]]:
    """The warnings and errors GDAL reports through rasterio's and pyogrio's loggers in this thread
    while the block runs (a damaged JPEG tile is only a warning to GDAL), for the caller to judge.
    They are logged at debug level as always."""
    stack = getattr(_COLLECTORS, "stack", None)
    if stack is None:
        stack = _COLLECTORS.stack = []
    collected: list[str] = []
    stack.append(collected)
    try:
        yield collected
    finally:
        stack.remove(collected)


@contextlib.contextmanager
def native_diagnostics() -> Iterator[list[str]]:
    """Catch what native libraries (libtiff, GDAL's drivers) print straight on file descriptor 2 inside
    the block, instead of letting it reach the terminal around the project's one-line message.

    Yields a list that holds those lines once the block has ended (for ``utils.errors.reason``); they
    are also logged at debug level. Python's own stderr (log lines, progress) still reaches the
    terminal meanwhile. Blocks in several threads take turns. Where file descriptor 2 cannot be
    redirected (no temporary file), the block runs as it is.
    """
    lines: list[str] = []
    with _NATIVE_LOCK:
        try:
            sink = tempfile.TemporaryFile()
        except OSError:
            yield lines
            return
        with sink:
            for stream in (sys.stderr, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            saved = os.dup(2)
            previous = sys.stderr
            try:
                if _writes_to_fd2(previous):
                    sys.stderr = open(saved, "w", buffering=1, closefd=False,
                                      encoding=getattr(previous, "encoding", None) or "utf-8", errors="backslashreplace")
                os.dup2(sink.fileno(), 2)
                yield lines
            finally:
                os.dup2(saved, 2)
                if sys.stderr is not previous:
                    with contextlib.suppress(Exception):
                        sys.stderr.close()
                    sys.stderr = previous
                os.close(saved)
                sink.seek(0)
                lines.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())
                for line in lines:
                    get_logger("native").debug("native: %s", line)


@contextlib.contextmanager
def native_failures(translate: Callable[[BaseException, Sequence[str]], BaseException]) -> Iterator[None]:
    """``native_diagnostics`` around a native library call whose failure the caller reports in its own
    words: an exception raised in the block is replaced by ``translate(exception, captured lines)``."""
    failure = None
    with native_diagnostics() as lines:
        try:
            yield
        except Exception as exc:
            failure = exc
    if failure is not None:
        raise translate(failure, lines) from None


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


class PlainProgress:
    """Progress as plain lines on a stream that is not a terminal (the part of tqdm's interface used here).

    Prints ``<desc>: <n>/<total> <unit> (<percent>) <elapsed>, <left> left <postfix>`` when it starts,
    each time another ``step`` percent are done (with no known total: every ``interval`` seconds), and
    at the end. A bar with ``leave=False`` (the patches of one image, inside a bar over images) prints
    nothing: the enclosing bar reports.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, file=None, step: float = 10.0, interval: float = 60.0,
                 **_: Any) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.step = step
        self.quiet = not leave
        self.interval = interval
        self.file = file or sys.stderr
        self.n = 0
        self.postfix = ""
        self.started = self._shown_at = time.monotonic()
        self._next_percent = self.step
        self._closed = False
        self._line()

    def _line(self) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts.append(f"({100 * self.n / self.total:.0f}%) {elapsed:.0f}s")
            if 0 < self.n < self.total:
                parts[-1] += f", {elapsed * (self.total - self.n) / self.n:.0f}s left"
        else:
            parts.append(f"{elapsed:.0f}s")
        if self.postfix:
            parts.append(self.postfix)
        try:
            print(" ".join(parts), file=self.file, flush=True)
        except (OSError, ValueError):  # a closed or full log must not stop the work
            pass
        self._shown_at = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total:
            if 100 * self.n / self.total >= self._next_percent and self.n < self.total:
                self._line()
                while self._next_percent <= 100 * self.n / self.total:
                    self._next_percent += self.step
        elif time.monotonic() - self._shown_at >= self.interval:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, enabled: bool = True, file=None, **kwargs):
    """Progress over ``iterable`` (or ``total`` updates) on stderr: a tqdm bar on a terminal, plain
    lines (``PlainProgress``) on a file or pipe, nothing on non-zero ranks or when not ``enabled``."""
    stream = file or sys.stderr
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if not getattr(stream, "isatty", lambda: False)():
        return PlainProgress(iterable, file=stream, **kwargs)
    return tqdm(iterable, dynamic_ncols=True, file=stream, **kwargs)


def process_memory_mb(field: str = "VmHWM") -> float:
    """VmRSS (now) or VmHWM (peak) resident memory of this process in MB, from /proc.

    VmHWM rather than ru_maxrss: Linux carries a forking parent's peak over exec into the child's
    ru_maxrss, while VmHWM belongs to this program's own address space. Where /proc is missing, the
    peak comes from ru_maxrss (kilobytes on Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: max allocated on CUDA, peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return process_memory_mb("VmHWM")
