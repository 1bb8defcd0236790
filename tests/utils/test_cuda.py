"""The utilities' CUDA-only paths: device selection, NCCL collectives in one process, the confusion matrix,
the boundary and region counts and the training augmentation on GPU tensors, and the CUDA peak-memory
figure. Seconds on one GPU; skipped, with the reason, where torch sees no CUDA GPU (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch

from utils.augment import random_flip_rotate
from utils.distributed import select_device
from utils.logging import peak_memory_mb
from utils.metrics import BoundaryCounts, ConfusionMatrix, RegionAccuracy

pytestmark = pytest.mark.cuda

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_select_device_gives_this_process_gpu():
    assert select_device(None) == torch.device("cuda:0")
    assert select_device("cuda") == torch.device("cuda:0")
    assert select_device("cuda:0") == torch.device("cuda:0")
    assert select_device("cpu") == torch.device("cpu")


# What the subprocess runs: init_distributed as train_deep_globe.run calls it, then a process group of one.
NCCL_ONE_PROCESS = r"""
import json

import torch
import torch.distributed as dist

from utils.distributed import all_reduce_max, all_reduce_sum, barrier, init_distributed, shutdown_distributed
from utils.metrics import ConfusionMatrix

info, device = init_distributed("cuda")
report = {"enabled": info.enabled, "rank": info.rank, "world_size": info.world_size, "device": str(device),
          "group_after_init_distributed": dist.is_initialized()}
torch.cuda.set_device(device)
dist.init_process_group("nccl", device_id=device)  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
report["backend"] = dist.get_backend()
values = torch.tensor([1.0, 2.0, 3.0], device=device)
report["in_place"] = all_reduce_sum(values) is values
report["sum"] = values.tolist()
counts = all_reduce_sum(torch.tensor([4, 0, 7], dtype=torch.int64, device=device))
report["counts"] = counts.tolist()
worst = all_reduce_max(torch.tensor([2.5, -1.0], dtype=torch.float64, device=device))
report["max"] = worst.tolist()
confusion = ConfusionMatrix(3, device)
confusion.update(torch.tensor([0, 1, 2, 2], device=device), torch.tensor([0, 1, 1, 2], device=device))
report["confusion"] = confusion.all_reduce_().matrix.tolist()
barrier()
torch.cuda.synchronize(device)
shutdown_distributed()
report["group_after_shutdown"] = dist.is_initialized()
print(json.dumps(report))
"""


def test_nccl_collectives_in_one_process():
    """With WORLD_SIZE=1, ``init_distributed("cuda")`` joins NO process group (it returns DistInfo() and
    cuda:0; one process needs none), so the subprocess then initialises an NCCL group of one itself
    (``torch.distributed.init_process_group("nccl")`` from the torchrun variables) and checks that
    ``all_reduce_sum`` / ``all_reduce_max`` / ``ConfusionMatrix.all_reduce_`` work on CUDA tensors
    through it, in place, and that ``shutdown_distributed`` leaves no group. A subprocess, so that no
    process group outlives the test."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", NCCL_ONE_PROCESS], capture_output=True, text=True, env=env,
                         cwd=str(ROOT), timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {
        "enabled": False, "rank": 0, "world_size": 1, "device": "cuda:0", "group_after_init_distributed": False,
        "backend": "nccl", "in_place": True, "sum": [1.0, 2.0, 3.0], "counts": [4, 0, 7], "max": [2.5, -1.0],
        "confusion": [[1, 0, 0], [0, 1, 1], [0, 0, 1]], "group_after_shutdown": False,
    }, out.stderr[-3000:]


def test_confusion_matrix_on_cuda_equals_the_cpu_one():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 7, (2, 96, 96), generator=g, dtype=torch.uint8)
    target = torch.randint(0, 7, (2, 96, 96), generator=g, dtype=torch.uint8)
    on_gpu, on_cpu = ConfusionMatrix(7, "cuda"), ConfusionMatrix(7, "cpu")
    on_gpu.update(pred.cuda(), target.cuda())
    on_cpu.update(pred, target)
    assert on_gpu.matrix.device.type == "cuda"
    assert torch.equal(on_gpu.matrix.cpu(), on_cpu.matrix)
    assert on_gpu.scores() == on_cpu.scores()
    with pytest.raises(ValueError, match="class indices must lie in 0..6"):
        on_gpu.update(torch.full((4,), 7, device="cuda"), torch.zeros(4, dtype=torch.int64, device="cuda"))


def test_boundary_counts_and_region_accuracy_on_cuda_equal_the_cpu_ones():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 7, (9, 12), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1).to(torch.uint8)
    target = pred.roll(3, 1)
    inside = torch.rand(pred.shape, generator=g) < 0.3
    results = []
    for device in ("cuda", "cpu"):
        counts, accuracy = BoundaryCounts(7, 3, device), RegionAccuracy(device)
        for top in range(0, pred.shape[0], 5):  # bands of 5 rows, on the device
            rows = slice(top, top + 5)
            counts.update(pred[rows].to(device), target[rows].to(device), top=top, height=pred.shape[0])
            accuracy.update(pred[rows].to(device), target[rows].to(device), inside[rows].to(device))
        assert counts.counts.device.type == accuracy.counts.device.type == device
        results.append((counts.counts.cpu(), counts.scores(), accuracy.accuracies()))
    (gpu, gpu_scores, gpu_accuracy), (cpu, cpu_scores, cpu_accuracy) = results
    assert torch.equal(gpu, cpu) and gpu_scores == cpu_scores and gpu_accuracy == cpu_accuracy


def test_augmentation_of_gpu_tensors_with_a_cpu_generator_matches_the_cpu():
    """Training augments on the device with a CPU generator (saved with the training state)."""
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 40, 56), generator=g, dtype=torch.uint8)
    label = torch.randint(0, 7, (40, 56), generator=g, dtype=torch.uint8)
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(8):
        gpu_image, gpu_label = random_flip_rotate(image.cuda(), label.cuda(), a)
        cpu_image, cpu_label = random_flip_rotate(image, label, b)
        assert gpu_image.device.type == "cuda"
        assert torch.equal(gpu_image.cpu(), cpu_image) and torch.equal(gpu_label.cpu(), cpu_label)
    assert torch.equal(a.get_state(), b.get_state())


def test_peak_memory_on_cuda_counts_device_allocations():
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB
    assert peak_memory_mb(torch.device("cuda")) >= 64
    del block
