"""The refinement stage's training without the command line: windows, steps, files and exact resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import DataLoader

from dataset.split_layout import collate_list
from engine.checkpoint_policy import CheckpointPolicy
from engine.refinement import RefinementPlan, RefinementTrainer
from models.refinement import RefinementNet, RefinementRecord, read_refinement, save_refinement
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor
from pipeline.refine import Refinement
from tests.engine.test_training import Scenes
from tools.stand_in import StandIn
from utils.errors import CheckpointError, Interrupted
from utils.labels import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = PipelineConfig(size_p=64, size_g=64, sub_batch_size=4)
RECORD = RefinementRecord(4, "stand_in", 7, "centred", None, "global")


def make(folder=None, epochs: int = 2, record: RefinementRecord = RECORD) -> RefinementTrainer:
    torch.manual_seed(0)
    base, context = StandIn(4).eval(), StandIn(0).eval()
    net = RefinementNet(record, width=8, dilations=(1, 2))
    refinement = Refinement(net, context if record.context == "global" else None)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    loader = DataLoader(Scenes(3), batch_size=2, shuffle=False, collate_fn=collate_list)
    checkpoints = None if folder is None else CheckpointPolicy(str(folder), "r", save=save_refinement)
    plan = RefinementPlan(epochs=epochs, lr=1e-2, seed=1, crops=3, crop=24)
    return RefinementTrainer(refinement, Predictor(base, CFG), optimizer, loader, CFG, plan, device=torch.device("cpu"),
                             checkpoints=checkpoints)


def test_windows_hold_the_core_labels_and_ignore_the_halo():
    trainer = make()
    scenes = Scenes(1)
    windows = list(trainer.windows(scenes.images[0], scenes.labels[0], torch.Generator().manual_seed(0)))
    assert len(windows) == 3
    for w in windows:
        h, wd = w.label.shape[-2:]
        assert w.image.shape == (1, 3, h, wd) and w.logits.shape == (1, 7, h, wd) and w.context.shape == (1, 7, h, wd)
        assert (w.label != IGNORE_INDEX).sum() == 24 * 24
        assert w.image.requires_grad is False and not w.logits.is_inference()


def test_training_changes_only_the_refinement_and_lowers_its_loss():
    trainer = make(epochs=6)
    base = [p.clone() for p in trainer.base.net.parameters()]
    first = trainer.train_epoch(0)
    for epoch in range(1, 6):
        last = trainer.train_epoch(epoch)
    assert last < first
    assert all(torch.equal(a, b) for a, b in zip(base, trainer.base.net.parameters()))
    assert trainer.net.head.weight.abs().sum() > 0


def test_resume_replays_the_remaining_epochs_exactly(tmp_path):
    straight = make(tmp_path / "a")
    straight.fit()
    stopped = make(tmp_path / "b")
    original = stopped.train_epoch

    def stop_in_epoch_2(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(epoch)

    stopped.train_epoch = stop_in_epoch_2
    with pytest.raises(Interrupted, match="r.last.pth holds the end of epoch 1"):
        stopped.fit()
    resumed = make(tmp_path / "b", epochs=2)
    resumed.fit(resume=True)
    a = read_refinement(str(tmp_path / "a" / "r.epoch.pth"))
    b = read_refinement(str(tmp_path / "b" / "r.epoch.pth"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["r.epoch.pth", "r.last.pth"]


def test_resume_refuses_a_missing_file_a_weight_file_and_another_base(tmp_path):
    with pytest.raises(CheckpointError, match="r.last.pth does not exist"):
        make(tmp_path).fit(resume=True)
    make(tmp_path, epochs=1).fit()
    other = dataclasses.replace(RECORD, context="none")
    with pytest.raises(CheckpointError, match="refines a mode-4 stand_in model"):
        make(tmp_path, record=other).fit(resume=True)
    (tmp_path / "r.epoch.pth").replace(tmp_path / "r.last.pth")
    with pytest.raises(CheckpointError, match="holds only refinement weights"):
        make(tmp_path).fit(resume=True)
