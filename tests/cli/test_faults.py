"""Training faults and crashes: non-finite loss or weights, out of memory, a full disk, Ctrl-C, SIGKILL at
random moments, and failures inside torchrun jobs. Nothing good on disk may be lost, and the user gets one
``error:`` line saying what happened and where to go on from."""

from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import utils.files
from engine.training import Trainer
from models.checkpoint import read_checkpoint, save_weights
from models.fctl import FCtLNet
from tests.cli.helpers import list_files, run_cli, tiny_args
from tests.cli.test_errors import expect_error, image_file, truncate
from tools.kill_test import CliProcess, run_trials
from utils.loss import FocalLoss

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_args(tiny_data, models, *extra: str) -> list[str]:
    """Mode 1, one image per epoch (one optimizer step, two forward passes)."""
    return tiny_args(tiny_data, str(models), str(models.parent / "logs"), "--task_name", "t", "--mode", "1",
                     "--train", "--max_images", "1", *extra)


def saved_epoch(path: pathlib.Path) -> int:
    weights, meta, extra = read_checkpoint(path, with_extra=True)
    assert meta["kind"] == "training-state"
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    return extra["epoch"]


# --- non-finite loss and weights -----------------------------------------------------------------------

def poison_loss(monkeypatch, current: dict, from_epoch: int) -> None:
    original = FocalLoss.forward

    def forward(self, logits, target):
        loss = original(self, logits, target)
        return loss * float("nan") if current["epoch"] >= from_epoch else loss

    monkeypatch.setattr(FocalLoss, "forward", forward)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_epoch(tiny_data, tmp_path, monkeypatch, epoch_of_run,
                                                              capsys):
    models = tmp_path / "models"
    poison_loss(monkeypatch, epoch_of_run, from_epoch=1)
    last = models / "t.last.pth"
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "3"), "loss became nan at epoch 2",
                 "stopped before the weights changed", f"{last} holds the end of epoch 1", "--resume", "--lr")
    assert saved_epoch(last) == 1
    assert list_files(str(models)) == ["t.last.pth"]


def test_nan_loss_in_the_first_epoch_says_nothing_was_saved(tiny_data, tmp_path, monkeypatch, epoch_of_run, capsys):
    models = tmp_path / "models"
    poison_loss(monkeypatch, epoch_of_run, from_epoch=0)
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "2"), "loss became nan at epoch 1",
                 "no epoch was completed", "start again without --resume")
    assert list_files(str(models)) == []


@pytest.mark.slow  # a CLI training run
def test_non_finite_weights_are_never_saved(tiny_data, tmp_path, monkeypatch, capsys):
    original = Trainer.train_epoch

    def train_epoch(self, epoch):
        result = original(self, epoch)
        if epoch == 1:  # as if a finite loss had given inf gradients in the last step of epoch 2
            next(self.net.parameters()).data.fill_(float("inf"))
        return result

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    models = tmp_path / "models"
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "2"), "became non-finite in epoch 2",
                 "without saving it", f"{models / 't.last.pth'} holds the end of epoch 1")
    assert saved_epoch(models / "t.last.pth") == 1
    assert list_files(str(models)) == ["t.last.pth"]  # no t.epoch.pth with broken weights


# --- out of memory -------------------------------------------------------------------------------------

def raise_out_of_memory(monkeypatch) -> None:
    def forward(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB (GPU 0; 23.65 GiB total)")

    monkeypatch.setattr(FCtLNet, "forward", forward)


@pytest.fixture
def untrained(tmp_path) -> pathlib.Path:
    """A mode-1 fpn_resnet18 weight file (random weights are enough to run inference)."""
    path = tmp_path / "pre.pth"
    save_weights(FCtLNet(1, "fpn_resnet18"), str(path))
    return path


def test_out_of_memory_in_training_suggests_a_smaller_sub_batch(tiny_data, tmp_path, monkeypatch, capsys):
    raise_out_of_memory(monkeypatch)
    expect_error(capsys, train_args(tiny_data, tmp_path / "models", "--epochs", "1"),
                 "out of memory on cpu with --sub_batch_size 8", "lower --sub_batch_size (e.g. 4)",
                 "no epoch was completed")


@pytest.mark.parametrize("mode", [["--evaluate"], []])
def test_out_of_memory_in_evaluation_and_test_mode(mode, tiny_data, tmp_path, untrained, monkeypatch, capsys):
    raise_out_of_memory(monkeypatch)
    argv = tiny_args(tiny_data, str(tmp_path), str(tmp_path / "logs"), "--mode", "1", "--pre_path", str(untrained),
                     "--prediction_path", str(tmp_path / "pred"), *mode)
    expect_error(capsys, argv, "out of memory on cpu with --sub_batch_size 8", "lower --sub_batch_size")
    assert list_files(str(tmp_path / "pred")) == []


# --- a full disk: the file that was there stays as it was ---------------------------------------------

@pytest.mark.slow  # CLI training runs on a small file system
def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tiny_data, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = torch.save

    def save(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:  # epoch 2: t.epoch.pth, then t.last.pth
            handle.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    models = tmp_path / "models"
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "2"), f"cannot write {models / 't.epoch.pth'}",
                 "No space left on device", "free space")
    assert list_files(str(models)) == ["t.last.pth"]  # no half-written file, no temporary left
    assert saved_epoch(models / "t.last.pth") == 1


def test_full_disk_while_writing_predictions_and_metrics(tiny_data, tmp_path, untrained, monkeypatch, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "test0000_mask.png").write_bytes(b"the earlier, good mask")
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"miou": 0.5}')

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.files.os, "fsync", fsync)
    base = tiny_args(tiny_data, str(tmp_path), str(tmp_path / "logs"), "--mode", "1", "--pre_path", str(untrained),
                     "--no_tta")
    expect_error(capsys, [*base, "--prediction_path", str(pred)], "cannot write test0000_mask.png", str(pred),
                 "No space left on device")
    assert list_files(str(pred)) == ["test0000_mask.png"]
    assert (pred / "test0000_mask.png").read_bytes() == b"the earlier, good mask"
    expect_error(capsys, [*base, "--evaluate", "--metrics_path", str(metrics)], f"cannot write metrics file {metrics}",
                 "No space left on device")
    assert metrics.read_text() == '{"miou": 0.5}'
    assert list_files(str(tmp_path)) == sorted(["logs", "metrics.json", "pre.pth", "pred"])


# --- leftovers of killed writes ------------------------------------------------------------------------

def test_temporaries_left_by_a_kill_are_removed_at_the_next_start(tiny_data, tmp_path, untrained, capsys):
    models, pred = tmp_path / "models", tmp_path / "pred"
    models.mkdir()
    pred.mkdir()
    stale = [models / "t.last.pth.k2j3h4x1.tmp", models / "t.epoch5.pth.a8b7c6d5.tmp", pred / "test0001_mask.png.q1w2e3r4.tmp"]
    keep = [models / "other.last.pth.z9y8x7w6.tmp", models / "notes.tmp"]
    for path in stale + keep:
        path.write_bytes(b"PK\x03\x04 partial")
    assert run_cli(*train_args(tiny_data, models, "--epochs", "1")) == 0
    assert "removed 2 temporary files left in" in capsys.readouterr().err
    assert run_cli(*tiny_args(tiny_data, str(tmp_path), str(tmp_path / "logs"), "--mode", "1", "--no_tta",
                              "--pre_path", str(untrained), "--prediction_path", str(pred))) == 0
    assert "removed 1 temporary files" in capsys.readouterr().err
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in keep)  # another task's, or not ours at all
    assert list_files(str(pred)) == ["test0000_mask.png", "test0001_mask.png"]


# --- Ctrl-C --------------------------------------------------------------------------------------------

class Process(CliProcess):
    """train_deep_globe.py with ``argv``, as python -m tools.kill_test runs it."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__([sys.executable, os.path.join(ROOT, "train_deep_globe.py"), *argv])

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not re.search(pattern, self.text):
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                pytest.fail(f"never saw {pattern!r}:\n{self.text[-3000:]}")
            time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_mid_epoch_stops_cleanly_with_last_pth_intact(tiny_data, tmp_path):
    models = tmp_path / "models"
    run = Process(train_args(tiny_data, models, "--epochs", "50", "--max_images", "3", "--batch_size", "1",
                             "--num_workers", "2"))
    run.wait_for(r"epoch 1/50 loss")  # epoch 1 done and saved
    run.wait_for(r"epoch 2/50: +[1-9]")  # a batch or more into epoch 2
    run.signal(signal.SIGINT)
    code = run.wait(timeout=120)
    lines = run.text.strip().splitlines()
    assert code == 130, run.text[-3000:]
    assert "Traceback" not in run.text, run.text[-3000:]
    done = saved_epoch(models / "t.last.pth")
    assert done >= 1
    assert lines[-1] == (f"error: interrupted (Ctrl-C); {models / 't.last.pth'} holds the end of epoch {done}: "
                         f"continue with --resume")
    assert list_files(str(models)) == ["t.last.pth"]


# --- SIGKILL at random moments -------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_only_loadable_checkpoints_and_resume_finishes(tmp_path):
    lines: list[str] = []
    summary = run_trials(trials=6, seed=7, epochs=4, max_delay=9.0, workdir=str(tmp_path), report=lines.append)
    assert not summary["failures"], "\n".join(lines)
    assert summary["all_loadable"] == 6
    assert summary["final_ok"] and summary["final_resumed"], "\n".join(lines)


# --- torchrun ------------------------------------------------------------------------------------------

def torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           os.path.join(ROOT, "train_deep_globe.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_torchrun_bad_image_in_one_process_gives_its_error_line_and_no_traceback_of_ours(tiny_data, tmp_path,
                                                                                         untrained):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = image_file(data, "crossvali", 1)  # the second process's image
    truncate(bad)
    out = torchrun(tiny_args(str(data), str(tmp_path), str(tmp_path / "logs"), "--mode", "1", "--evaluate",
                             "--pre_path", str(untrained)), port=29547)
    assert out.returncode != 0
    assert f"error: image {bad} is truncated" in out.stderr, out.stderr[-3000:]
    # torchrun itself reports the failed child with its own summary; our processes print no traceback.
    ours = re.compile(r'File "' + re.escape(ROOT) + r'/(train_deep_globe|utils|models|dataset)')
    assert not ours.search(out.stderr) and "]: Traceback" not in out.stderr, out.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_skip_bad_images_when_one_process_has_only_bad_images(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for index in (1, 2):
        truncate(image_file(data, "train", index))
    # 3 images, 2 processes, 1 image per batch: the sampler pads to 4, so each process gets 2 batches and
    # at least one batch of one process is empty; it must still join every gradient all-reduce.
    out = torchrun(tiny_args(str(data), str(tmp_path / "models"), str(tmp_path / "logs"), "--mode", "1", "--train",
                             "--epochs", "1", "--batch_size", "1", "--skip_bad_images", "--task_name", "ddp"),
                   port=29548)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipping train0001" in out.stderr and "skipping train0002" in out.stderr
    assert list_files(str(tmp_path / "models")) == ["ddp.epoch.pth", "ddp.last.pth"]
