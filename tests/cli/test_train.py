"""Training through the entry script: every mode, the stage chain, exact resume, DDP on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from engine.training import Trainer
from models.checkpoint import read_checkpoint
from tests.cli.helpers import list_files, run_cli, tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def stages(tiny_data, tmp_path_factory):
    """Train the whole staged recipe once (1 epoch each), as the shell scripts chain it."""
    out = tmp_path_factory.mktemp("stages")
    models, logs = str(out / "models"), str(out / "runs")
    chain = [
        ("global", "0", []),
        ("pre", "1", []),
        ("medium", "2", ["--pre_path", "pre.epoch.pth"]),
        ("selflarge", "3", ["--pre_path", "pre.epoch.pth", "--glo_path", "global.epoch.pth"]),
        ("all", "4", ["--pre_path", "pre.epoch.pth", "--c_path", "medium.epoch.pth", "--glo_path", "global.epoch.pth"]),
    ]
    for task, mode, extra in chain:
        code = run_cli(*tiny_args(tiny_data, models, logs, "--task_name", task, "--mode", mode, "--train", "--val",
                                  "--epochs", "1", "--val_every", "1", *extra))
        assert code == 0, task
    return models, logs


@pytest.mark.slow  # the whole stage chain
def test_every_stage_writes_its_checkpoints(stages):
    models, logs = stages
    files = list_files(models)
    for task in ("global", "pre", "medium", "selflarge", "all"):
        assert {f"{task}.epoch.pth", f"{task}.best.pth", f"{task}.last.pth"} <= set(files), files
        assert os.path.exists(os.path.join(logs, task, "train.log"))
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(logs, task)))
    assert not [f for f in files if ".tmp" in f], files


@pytest.mark.slow  # the whole stage chain
def test_trained_checkpoints_load_for_evaluation(stages, tiny_data, tmp_path):
    models, logs = stages
    metrics = tmp_path / "m.json"
    code = run_cli(*tiny_args(tiny_data, models, logs, "--task_name", "all", "--mode", "4", "--evaluate",
                              "--pre_path", "all.epoch.pth", "--c_path", "medium.epoch.pth",
                              "--glo_path", "global.epoch.pth", "--metrics_path", str(metrics)))
    assert code == 0
    scores = json.loads(metrics.read_text())
    assert set(scores) >= {"miou", "iou", "f1", "accuracy", "confusion_matrix"}
    assert len(scores["iou"]) == 7 and 0.0 <= scores["miou"] <= 1.0


def _weights(path):
    weights, _ = read_checkpoint(path)[:2]
    return weights


@pytest.mark.slow  # three CLI runs; tests/engine covers resume without the CLI
def test_resume_after_an_interruption_matches_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    base = ["--task_name", "r", "--mode", "2", "--train", "--epochs", "3", "--seed", "5"]
    straight = tmp_path / "straight"
    assert run_cli(*tiny_args(tiny_data, str(straight), str(tmp_path / "l1"), *base)) == 0

    broken = tmp_path / "broken"
    original = Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert run_cli(*tiny_args(tiny_data, str(broken), str(tmp_path / "l2"), *base)) == 130
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert not (broken / "r.epoch.pth").exists()
    assert run_cli(*tiny_args(tiny_data, str(broken), str(tmp_path / "l2"), *base, "--resume")) == 0

    a, b = _weights(str(straight / "r.epoch.pth")), _weights(str(broken / "r.epoch.pth"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_set_of_checkpoints(tiny_data, tmp_path):
    models = tmp_path / "models"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           os.path.join(ROOT, "train_deep_globe.py"),
           *tiny_args(tiny_data, str(models), str(tmp_path / "logs"), "--task_name", "ddp", "--mode", "1", "--train",
                      "--val", "--epochs", "1", "--val_every", "1", "--batch_size", "1")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(list_files(str(models))) == ["ddp.best.pth", "ddp.epoch.pth", "ddp.last.pth"]
    assert out.stderr.count("epoch 1/1 loss") == 1  # only rank 0 logs
