"""The engine without the command line: a training step, an epoch, resume equality and the checkpoint
policy, driven with a tiny FCtLNet and an in-memory data set."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dataset.split_layout import collate_list
from engine.checkpoint_policy import CheckpointPolicy, keep_epoch
from engine.training import Trainer, TrainingPlan
from models.checkpoint import read_checkpoint
from models.fctl import FCtLNet
from pipeline.config import PipelineConfig
from utils.errors import CheckpointError, TrainingFault
from utils.loss import FocalLoss

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, PATCH = 64, 64


class Scenes(Dataset):
    """Items shaped like DeepGlobe's: a uint8 image whose left half is darker where the label is 1."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = [(torch.rand(SIZE, SIZE, generator=g) > 0.5).to(torch.uint8) for _ in range(n)]
        self.images = [(lab * 120 + torch.randint(0, 100, (3, SIZE, SIZE), generator=g)).to(torch.uint8)
                       for lab in self.labels]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"id": f"s{i}", "image": self.images[i], "label": self.labels[i], "path": f"s{i}.png"}


def make_trainer(folder=None, mode: int = 1, epochs: int = 2, seed: int = 3, images: int = 3,
                 init_seed: int = 0) -> Trainer:
    torch.manual_seed(init_seed)
    model = FCtLNet(mode, "fpn_resnet18", n_class=2, gamma_init=1.0).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(Scenes(images), batch_size=2, shuffle=False, collate_fn=collate_list)
    checkpoints = None if folder is None else CheckpointPolicy(str(folder), "t")
    cfg = PipelineConfig(size_p=PATCH, size_g=PATCH, context=2, sub_batch_size=4)
    return Trainer(model, optimizer, loader, FocalLoss(gamma=3.0), cfg, TrainingPlan(epochs=epochs, lr=1e-3, seed=seed),
                   device=torch.device("cpu"), checkpoints=checkpoints)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_one_step_changes_only_trainable_weights_and_steps_lower_the_loss(mode):
    trainer = make_trainer(mode=mode)
    item = trainer.loader.dataset[0]
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    losses = [trainer.train_step(trainer.units([item["image"]], [item["label"]])) for _ in range(5)]
    assert trainer.state.iteration == 5
    assert losses[-1] < losses[0], losses
    changed = {k for k, v in trainer.net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k in dict(trainer.net.named_parameters()) for k in changed)


def test_a_non_finite_loss_stops_before_the_weights_change():
    trainer = make_trainer()
    item = trainer.loader.dataset[0]
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    trainer.criterion = lambda logits, y: logits.sum() * float("nan")
    with pytest.raises(TrainingFault, match="loss became nan at epoch 1, step 1"):
        trainer.train_step(trainer.units([item["image"]], [item["label"]]))
    assert all(torch.equal(v, before[k]) for k, v in trainer.net.state_dict().items())


def test_fit_writes_the_policy_files(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    state = trainer.fit()
    assert (state.epoch, state.iteration) == (2, 4)  # 3 images in batches of 2: 2 steps an epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.epoch.pth", "t.last.pth"]
    _, meta, extra = read_checkpoint(tmp_path / "t.last.pth", with_extra=True)
    assert meta["kind"] == "training-state" and extra["epoch"] == 2 and extra["iteration"] == 4


@pytest.mark.slow  # two full training runs compared bit for bit
def test_resume_replays_the_remaining_epochs_exactly(tmp_path):
    straight = make_trainer(tmp_path / "a", epochs=3, images=2)
    straight.fit()
    first = make_trainer(tmp_path / "b", epochs=3, images=2)
    original = first.train_epoch

    def stop_in_epoch_2(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(epoch)

    first.train_epoch = stop_in_epoch_2
    with pytest.raises(Exception, match="holds the end of epoch 1"):
        first.fit()
    # Other initial weights and RNG state: resume must restore them.
    resumed = make_trainer(tmp_path / "b", epochs=3, images=2, init_seed=99)
    resumed.fit(resume=True)
    assert resumed.state.epoch == 3 and resumed.state.iteration == straight.state.iteration
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_policy_schedule_and_messages(tmp_path):
    assert [e for e in range(1, 41) if keep_epoch(e)] == [5, 10, 15, 20, 25, 30, *range(34, 41)]
    policy = CheckpointPolicy(str(tmp_path), "run", keep=lambda e: e == 1)
    assert "no epoch was completed" in policy.kept()
    model = FCtLNet(1, "fpn_resnet18", n_class=2)
    policy.end_of_epoch(model, 1, 2, {"model": {}, "epoch": 1})
    policy.end_of_epoch(model, 2, 2, {"model": {}, "epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.epoch.pth", "run.epoch1.pth", "run.last.pth"]
    assert policy.kept() == f"{tmp_path / 'run.last.pth'} holds the end of epoch 2: continue with `resume`"
    silent = CheckpointPolicy(str(tmp_path / "other"), "run", enabled=False)
    silent.end_of_epoch(model, 1, 1, {})
    assert not (tmp_path / "other").exists() and silent.saved_epoch == 1


def test_resume_refuses_a_missing_or_foreign_last_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointPolicy(str(tmp_path), "t").read_last(1, "fpn_resnet18")
    make_trainer(tmp_path, epochs=1).fit()
    with pytest.raises(CheckpointError, match="is a mode-1 fpn_resnet18 run, not mode 2"):
        CheckpointPolicy(str(tmp_path), "t").read_last(2, "fpn_resnet18")


class _Lrs:
    """A writer that keeps the learning rate of every step and the epochs scores were logged for."""

    def __init__(self) -> None:
        self.lrs, self.val_epochs = [], []

    def add_scalar(self, tag, value, step) -> None:
        if tag == "train/lr":
            self.lrs.append(value)
        if tag == "val/miou":
            self.val_epochs.append(step)

    def add_image(self, *args) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.slow  # ten epochs of training
def test_the_inria_schedule_starts_halfway_and_keeps_only_every_fifth_epoch(tmp_path):
    # The Inria release: epochs 51..100 of a 100-epoch poly schedule, checkpoints only with validation.
    assert [e for e in range(51, 101) if keep_epoch(e, 0)] == list(range(55, 101, 5))
    trainer = make_trainer(tmp_path, images=2)
    trainer.plan = TrainingPlan(epochs=10, lr=1e-3, seed=3, val_every=5, start_epoch=5)
    trainer.checkpoints = CheckpointPolicy(str(tmp_path), "t", keep=lambda e: keep_epoch(e, 0))
    trainer.val_set, trainer.writer = Scenes(1), _Lrs()
    writer = trainer.writer
    state = trainer.fit()
    assert (state.epoch, state.iteration) == (10, 10)  # one step an epoch, counted from epoch 5
    assert writer.lrs[0] == pytest.approx(1e-3 * 0.5 ** 0.9) and len(writer.lrs) == 5
    assert writer.val_epochs == [10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.best.pth", "t.epoch.pth", "t.epoch10.pth", "t.last.pth"]
