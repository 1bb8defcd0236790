"""Refinement checkpoints: the record of what they refine, round trips, and the files they are not."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.checkpoint import read_checkpoint, save_weights
from models.fctl import FCtLNet
from models.refinement import RefinementNet, RefinementRecord, check_refines, read_refinement, save_refinement
from utils.errors import CheckpointError

BASE = RefinementRecord(4, "fpn_resnet18", 7, "centred", {"name": "t", "classes": [{"name": "a", "colour": [0, 0, 0]}]},
                        "global")


def test_a_saved_refinement_reads_back_with_its_record_and_weights(tmp_path):
    torch.manual_seed(0)
    net = RefinementNet(BASE, width=8, dilations=(1, 3))
    torch.nn.init.normal_(net.head.weight)
    save_refinement(net, str(tmp_path / "r.pth"))
    back = read_refinement(str(tmp_path / "r.pth"))
    assert back.record == BASE and back.width == 8 and back.dilations == (1, 3) and back.halo == 9
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    check_refines(back, BASE, "r.pth")


@pytest.mark.parametrize("change, says", [
    ({"mode": 1}, "mode 4, not 1"), ({"backbone": "fcn8_vgg16"}, "backbone fpn_resnet18, not fcn8_vgg16"),
    ({"classes": None}, "another class table (one of them records none)"),
    ({"classes": {"name": "t", "classes": [{"name": "a", "colour": [9, 9, 9]}]}},
     "another class table (class 'a' has colour [0, 0, 0] in the file, [9, 9, 9] here)"),
    ({"correlation": "plain"}, "correlation centred, not plain"),
    ({"context": "none"}, "with the global model it reads as `glo_path`"),
])
def test_a_refinement_for_another_base_is_refused(change, says):
    """Each field that differs is named; for the class table, what in it differs."""
    other = dataclasses.replace(BASE, **change)
    with pytest.raises(CheckpointError, match="refinement r.pth refines a mode-4") as info:
        check_refines(RefinementNet(BASE), other, "r.pth")
    assert says in str(info.value)


def test_model_weights_and_refinements_are_not_taken_for_each_other(tmp_path):
    save_weights(FCtLNet(1, "fpn_resnet18"), str(tmp_path / "pre.pth"))
    save_refinement(RefinementNet(BASE), str(tmp_path / "r.pth"))
    with pytest.raises(CheckpointError, match="pre.pth is not a refinement checkpoint"):
        read_refinement(str(tmp_path / "pre.pth"))
    with pytest.raises(CheckpointError, match="r.pth is a refinement network"):
        read_checkpoint(str(tmp_path / "r.pth"))


def test_a_damaged_refinement_is_one_clear_error(tmp_path):
    state = torch.load(_saved(tmp_path), weights_only=True)
    del state["refiner.head.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth is damaged or of another version"):
        read_refinement(str(tmp_path / "bad.pth"))
    (tmp_path / "cut.pth").write_bytes(open(_saved(tmp_path), "rb").read()[:200])
    with pytest.raises(CheckpointError, match="cut.pth"):
        read_refinement(str(tmp_path / "cut.pth"))


def _saved(tmp_path) -> str:
    path = str(tmp_path / "ok.pth")
    save_refinement(RefinementNet(BASE), path)
    return path
