"""Evaluation and test mode under torchrun (2 processes, gloo): the images are split between the
processes, each writes its own predictions, the confusion matrices are summed, and the results equal a
single process's exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.cli.helpers import list_files, run_cli, tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow  # torchrun jobs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           os.path.join(ROOT, "train_deep_globe.py"), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _single(argv: list[str]) -> int:
    """The same command in this process, on one thread like each torchrun process (same float results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cli(*argv)
    finally:
        torch.set_num_threads(threads)


def _args(tiny_data: str, models: str, logs: str, *extra: str) -> list[str]:
    return tiny_args(tiny_data, models, logs, "--mode", "1", "--pre_path", "pre.pth", *extra)


def test_two_process_evaluation_gives_the_single_process_metrics(tiny_data, fpn_pre_folder, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert _single(_args(tiny_data, fpn_pre_folder, str(tmp_path / "l1"), "--evaluate", "--metrics_path", str(one))) == 0
    out = _torchrun(_args(tiny_data, fpn_pre_folder, str(tmp_path / "l2"), "--evaluate", "--metrics_path", str(two)))
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert a == b
    assert sum(map(sum, b["confusion_matrix"])) == 2 * 96 * 96 and b["images"] == 2
    assert out.stderr.count("mIoU") == 1  # only rank 0 reports


def test_two_process_test_mode_writes_every_prediction_once(tiny_data, fpn_pre_folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _single(_args(tiny_data, fpn_pre_folder, str(tmp_path / "l1"), "--prediction_path", str(one))) == 0
    out = _torchrun(_args(tiny_data, fpn_pre_folder, str(tmp_path / "l2"), "--prediction_path", str(two)))
    sat = os.path.join(tiny_data, "offical_crossvali", "Sat")
    ids = sorted(f.rsplit("_sat", 1)[0] for f in os.listdir(sat))
    assert list_files(str(two)) == list_files(str(one)) == [f"{i}_mask.png" for i in ids]
    for name in list_files(str(one)):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert out.stderr.count("predicted 2 images") == 1  # counts summed over the processes, reported once
