"""The engine's CUDA-only paths: AMP training steps (bf16, and fp16 with the GradScaler), the CUDA RNG and
scaler in the training state, pinned batches copied with ``non_blocking=True``, whole command-line runs
with ``--device cuda`` (channels_last model, cudnn.benchmark, pinned DataLoader workers) and the
out-of-memory error lines on CUDA (the CPU versions are in tests/cli/test_faults.py).

Tiny FCtLNets (fpn_resnet18) on 64 px in-memory scenes or the 96 px tiny data set: seconds on one GPU.
Skipped, with the reason, where torch sees no CUDA GPU (tests/conftest.py)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from torch.utils.data import DataLoader

import engine.training
from dataset.split_layout import collate_list
from engine.checkpoint_policy import CheckpointPolicy
from engine.training import Trainer, TrainingPlan
from models.checkpoint import read_checkpoint
from models.fctl import FCtLNet
from pipeline.config import AMP_DTYPES, PipelineConfig
from tests.cli.helpers import list_files, run_cli, tiny_args
from tests.cli.test_errors import expect_error
from tests.engine.test_training import Scenes
from utils.loss import FocalLoss

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
SIZE, PATCH = 64, 64


@pytest.fixture(autouse=True)
def keep_cudnn_benchmark():
    """train_deep_globe.run sets torch.backends.cudnn.benchmark for the whole process; put it back."""
    saved = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = saved


def make_trainer(amp: str | None = None, *, mode: int = 1, folder=None, epochs: int = 2, images: int = 3,
                 pin_memory: bool = False, channels_last: bool = True) -> Trainer:
    """A Trainer on the GPU; the model is channels_last as train_deep_globe.py makes it on CUDA."""
    torch.manual_seed(0)
    model = FCtLNet(mode, "fpn_resnet18", n_class=2, gamma_init=1.0).to(CUDA)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(Scenes(images), batch_size=2, shuffle=False, collate_fn=collate_list, pin_memory=pin_memory)
    checkpoints = None if folder is None else CheckpointPolicy(str(folder), "t")
    cfg = PipelineConfig(size_p=PATCH, size_g=PATCH, context=2, sub_batch_size=4, amp=amp is not None,
                         amp_dtype=AMP_DTYPES[amp or "bf16"])
    return Trainer(model, optimizer, loader, FocalLoss(gamma=3.0), cfg, TrainingPlan(epochs=epochs, lr=1e-3, seed=3),
                   device=CUDA, checkpoints=checkpoints)


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


# --- AMP training steps ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_train_steps_on_cuda_lower_the_loss_with_finite_weights(amp, mode):
    """Mode 2 also back-propagates through the medium contexts (same backbone, one batch). The scaler is
    enabled for fp16 only; it may skip a first step on overflow, hence 8 steps."""
    trainer = make_trainer(amp, mode=mode)
    dtype = AMP_DTYPES[amp]
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    item = trainer.loader.dataset[0]
    image, label = item["image"].to(CUDA), item["label"].to(CUDA)
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    seen = set()
    hooks = [m.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
             for m in trainer.net.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        losses = [trainer.train_step(trainer.units([image], [label])) for _ in range(8)]
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {dtype}
    assert trainer.state.iteration == 8
    assert losses[-1] < losses[0], losses
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all_finite(trainer.net)
    changed = [k for k, v in trainer.net.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no optimizer step changed a weight"
    if amp == "fp16":
        scale = trainer.scaler.get_scale()
        assert 0 < scale < float("inf"), scale


def test_fp16_fit_saves_the_scaler_and_cuda_rng_and_resume_restores_them(tmp_path):
    trainer = make_trainer("fp16", folder=tmp_path, epochs=1)
    trainer.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.epoch.pth", "t.last.pth"]
    weights, meta, extra = read_checkpoint(tmp_path / "t.last.pth", with_extra=True)
    assert meta["kind"] == "training-state" and extra["epoch"] == 1 and extra["iteration"] == 2
    assert extra["scaler"] and extra["scaler"]["scale"] > 0  # an enabled scaler's state, not {}
    assert extra["rng_cuda"].dtype == torch.uint8
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())

    resumed = make_trainer("fp16", folder=tmp_path, epochs=2)
    torch.cuda.manual_seed(12345)  # another CUDA RNG state: resume must restore the saved one
    resumed.resume()
    assert (resumed.state.epoch, resumed.state.iteration) == (1, 2)
    assert resumed.scaler.get_scale() == extra["scaler"]["scale"]
    assert torch.equal(torch.cuda.get_rng_state(), extra["rng_cuda"])
    assert next(resumed.net.parameters()).device.type == "cuda"
    state = resumed.fit()
    assert (state.epoch, state.iteration) == (2, 4)
    assert all_finite(resumed.net)


# --- pinned batches, non-blocking copies ---------------------------------------------------------------

def test_pinned_batches_copy_non_blocking_to_the_same_values(monkeypatch):
    data = Scenes(3)
    loader = DataLoader(data, batch_size=2, shuffle=False, collate_fn=collate_list, pin_memory=True)
    index = 0
    for batch in loader:
        for img, lab in zip(batch["image"], batch["label"]):
            assert img.is_pinned() and lab.is_pinned()
            fast, slow = img.to(CUDA, non_blocking=True), img.to(CUDA)
            fast_label = lab.to(CUDA, non_blocking=True)
            assert torch.equal(fast, slow)  # same stream: the comparison runs after both copies
            assert torch.equal(fast.cpu(), data.images[index]) and torch.equal(fast_label.cpu(), data.labels[index])
            index += 1
    assert index == 3

    # The Trainer's own copies (``non_blocking=True`` from the pinned batches, then augmented at once).
    seen = []
    augment = engine.training.random_flip_rotate

    def spy(image, label, generator):
        seen.append((image.clone(), label.clone()))
        return augment(image, label, generator)

    monkeypatch.setattr(engine.training, "random_flip_rotate", spy)
    trainer = make_trainer(pin_memory=True, epochs=1)
    loss, scores = trainer.train_epoch(0)
    assert len(seen) == 3 and torch.isfinite(torch.tensor(loss)) and 0 <= scores["miou"] <= 1
    for (image, label), want_image, want_label in zip(seen, data.images, data.labels):
        assert image.device.type == "cuda"
        assert torch.equal(image.cpu(), want_image) and torch.equal(label.cpu(), want_label)


# --- the command line on CUDA ---------------------------------------------------------------------------

def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value after ``flag`` replaced."""
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def cuda_args(data: str, models: str, logs: str, *extra: str) -> list[str]:
    """tiny_args with ``--device cuda``."""
    return with_option(tiny_args(data, models, logs, *extra), "--device", "cuda")


def train_args(tiny_data, models: pathlib.Path, *extra: str) -> list[str]:
    return cuda_args(tiny_data, str(models), str(models.parent / "logs"), "--task_name", "t", "--mode", "1",
                     "--train", *extra)


def test_cli_training_on_cuda_with_pinned_workers_writes_the_epoch_file(tiny_data, tmp_path, capsys):
    """Two reading workers, pinned batches (pin_memory is on for CUDA), channels_last model."""
    models = tmp_path / "models"
    argv = with_option(train_args(tiny_data, models, "--epochs", "1"), "--num_workers", "2")
    assert run_cli(*argv) == 0, capsys.readouterr().err[-3000:]
    assert list_files(str(models)) == ["t.epoch.pth", "t.last.pth"]
    weights, meta, extra = read_checkpoint(models / "t.last.pth", with_extra=True)
    assert meta["kind"] == "training-state" and extra["epoch"] == 1 and extra["iteration"] == 2  # 3 images, batch 2
    assert "rng_cuda" in extra
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    epoch_weights, _ = read_checkpoint(models / "t.epoch.pth")
    assert all(bool(torch.isfinite(t).all()) for t in epoch_weights.values())


def test_cli_evaluates_and_predicts_on_cuda_with_fp16(tiny_data, fpn_pre_folder, tmp_path, capsys):
    metrics, pred = tmp_path / "metrics.json", tmp_path / "pred"
    base = cuda_args(tiny_data, fpn_pre_folder, str(tmp_path / "logs"), "--mode", "1", "--pre_path", "pre.pth",
                     "--amp", "--amp_dtype", "fp16")
    assert run_cli(*base, "--evaluate", "--metrics_path", str(metrics)) == 0, capsys.readouterr().err[-3000:]
    scores = json.loads(metrics.read_text())
    assert sum(map(sum, scores["confusion_matrix"])) == 2 * 96 * 96 and 0 <= scores["miou"] <= 1
    assert run_cli(*base, "--prediction_path", str(pred)) == 0, capsys.readouterr().err[-3000:]  # TTA on
    assert list_files(str(pred)) == ["test0000_mask.png", "test0001_mask.png"]


# --- out of memory on CUDA ------------------------------------------------------------------------------

def raise_out_of_memory(monkeypatch, current: dict | None = None, from_epoch: int = 0) -> None:
    """FCtLNet.forward raises CUDA's out-of-memory error (from epoch ``from_epoch`` of a run when given)."""
    original = FCtLNet.forward

    def forward(self, *args, **kwargs):
        if current is None or current["epoch"] >= from_epoch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB (GPU 0; 139.81 GiB total)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FCtLNet, "forward", forward)


@pytest.mark.parametrize("mode", [["--evaluate"], []])
def test_out_of_memory_on_cuda_in_evaluation_and_test_mode(mode, tiny_data, fpn_pre_folder, tmp_path, monkeypatch,
                                                           capsys):
    raise_out_of_memory(monkeypatch)
    argv = cuda_args(tiny_data, fpn_pre_folder, str(tmp_path / "logs"), "--mode", "1", "--pre_path", "pre.pth",
                     "--prediction_path", str(tmp_path / "pred"), "--metrics_path", str(tmp_path / "m.json"), *mode)
    expect_error(capsys, argv, "out of memory on cuda", "with --sub_batch_size 8", "lower --sub_batch_size (e.g. 4)")
    assert list_files(str(tmp_path / "pred")) == []
    assert not (tmp_path / "m.json").exists()


def test_out_of_memory_on_cuda_in_the_first_epoch_says_nothing_was_saved(tiny_data, tmp_path, monkeypatch, capsys):
    raise_out_of_memory(monkeypatch)
    models = tmp_path / "models"
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "1", "--max_images", "1"), "out of memory on cuda",
                 "with --sub_batch_size 8", "lower --sub_batch_size (e.g. 4)", "no epoch was completed",
                 "start again without --resume")
    assert list_files(str(models)) == []


def test_out_of_memory_on_cuda_in_epoch_2_names_the_last_file(tiny_data, tmp_path, monkeypatch, epoch_of_run, capsys):
    raise_out_of_memory(monkeypatch, epoch_of_run, from_epoch=1)
    models = tmp_path / "models"
    last = models / "t.last.pth"
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "2", "--max_images", "1"), "out of memory on cuda",
                 "with --sub_batch_size 8", "lower --sub_batch_size (e.g. 4)", f"{last} holds the end of epoch 1",
                 "continue with --resume")
    assert list_files(str(models)) == ["t.last.pth"]
    _, meta, extra = read_checkpoint(last, with_extra=True)
    assert meta["kind"] == "training-state" and extra["epoch"] == 1
