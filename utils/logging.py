"""Logging that plays well with tqdm bars and with several processes.

Only rank 0 prints INFO; other ranks print warnings and errors, prefixed with their rank, so a
multi-GPU run reads like a single one. Messages go through ``tqdm.write`` so they never tear a bar.
"""

from __future__ import annotations

import logging
import os
import resource
import sys

import torch
from tqdm import tqdm

LOGGER_NAME = "fctl"


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def setup_logging(rank: int = 0, log_file: str | None = None) -> logging.Logger:
    """Configure the project's logger once per process; optionally also append to ``log_file``."""
    root = logging.getLogger(LOGGER_NAME)
    root.handlers.clear()
    root.setLevel(logging.INFO)
    root.propagate = False
    prefix = "" if rank == 0 else f"[rank {rank}] "
    console = _TqdmHandler()
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(prefix + "%(message)s"))
    root.addHandler(console)
    if log_file is not None and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    # Modules log through children of this logger ("fctl.data", ...); route the packages' own
    # loggers here too so their warnings are not lost when they use logging.getLogger(__name__).
    for package in ("dataset", "models", "utils"):
        child = logging.getLogger(package)
        child.handlers = root.handlers
        child.setLevel(logging.INFO)
        child.propagate = False
    return root


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


def progress(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr that is silent on non-zero ranks and when disabled."""
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, file=sys.stderr, **kwargs)


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
