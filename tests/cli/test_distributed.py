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


def test_two_processes_split_the_input_scenes(fpn_pre_folder, tmp_path):
    from dataset.synthetic import write_synthetic_raster

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(3):
        write_synthetic_raster(str(scenes / f"s{i}.tif"), 90, 110 + 10 * i, seed=i)
    common = ["--mode", "1", "--backbone", "fpn_resnet18", "--model_path", fpn_pre_folder, "--pre_path", "pre.pth",
              "--size_p", "64", "--device", "cpu", "--no_pretrained", "--no_tta", "--input", str(scenes)]
    out = _torchrun([*common, "--prediction_path", str(tmp_path / "two"), "--log_path", str(tmp_path / "l2")])
    assert _single([*common, "--prediction_path", str(tmp_path / "one"), "--log_path", str(tmp_path / "l1")]) == 0
    names = ["s0_mask.tif", "s1_mask.tif", "s2_mask.tif"]
    assert list_files(tmp_path / "two") == names == list_files(tmp_path / "one")
    import rasterio

    for name in names:
        with rasterio.open(tmp_path / "one" / name) as a, rasterio.open(tmp_path / "two" / name) as b:
            assert (a.read(1) == b.read(1)).all()
    assert out.stderr.count("predicted 3 scenes") == 1  # the summary counts both processes, on rank 0 only
