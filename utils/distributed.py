"""One entry point for one process or many (``torchrun --nproc_per_node=N``).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; when they are present we join the process group
(NCCL on CUDA, gloo on CPU), pin each process to its own GPU and let rank 0 alone write files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside any (Distributed)DataParallel wrappers (the module itself when unwrapped)."""
    while isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        module = module.module
    return module


def available_devices() -> list[str]:
    """The devices this program can run on here: cpu, and each visible CUDA GPU."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]


def select_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """The requested device, or cuda (this process's GPU under torchrun) when available, else cpu.

    Only devices this program runs on are accepted (cpu and visible CUDA GPUs; torch knows more
    device types, e.g. meta, mps or xpu, which the pipeline does not support); anything else is a
    ConfigError that lists what this machine has."""
    if requested is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    have = f"this machine has {', '.join(available_devices())}"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"`device` {requested!r} is not a device; {have}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise ConfigError(f"`device` {requested!r}: the CPU is one device; {have}")
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"`device` {requested!r}: device type {device.type!r} is not supported by this program; "
                          f"{have}")
    if not torch.cuda.is_available():
        raise ConfigError(f"`device` {requested!r} was asked for but no CUDA GPU is visible "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); {have}")
    if device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.index >= torch.cuda.device_count():
        raise ConfigError(f"`device` {requested!r}: there is no GPU {device.index}; {have}")
    return device


def init_distributed(device_request: str | None) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; returns the process's identity and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), select_device(device_request)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = select_device(device_request, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum of ``tensor`` over processes in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def shard(indices: list[int], info: DistInfo) -> list[int]:
    """This process's share of ``indices`` for evaluation: every world_size-th item, no padding, so no
    image is scored twice."""
    return indices[info.rank::info.world_size]
