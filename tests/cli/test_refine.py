"""The refinement stage through the entry script: training it, applying it, and its errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from models.checkpoint import save_weights
from models.fctl import FCtLNet
from tests.cli.helpers import list_files, run_cli, tiny_args
from tests.cli.test_errors import expect_error

pytestmark = pytest.mark.usefixtures("one_thread")

# What each mode's base needs besides its own weights, as (option, mode of the file).
FROZEN = {1: [], 2: [], 3: [("--glo_path", 0)], 4: [("--c_path", 2), ("--glo_path", 0)],
          5: [("--c_path", 2), ("--c2_path", 2)]}


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> callable:
    """``weights(mode, backbone) -> file name`` of seeded, untrained models in one folder (made once each)."""
    folder = tmp_path_factory.mktemp("untrained")

    def weights(mode: int, backbone: str) -> str:
        name = f"m{mode}_{backbone}.pth"
        if not (folder / name).exists():
            torch.manual_seed(mode)
            save_weights(FCtLNet(mode, backbone, gamma_init=1.0), str(folder / name))
        return name

    weights.folder = str(folder)
    return weights


def base_args(untrained, mode: int, backbone: str, glo: bool) -> list[str]:
    args = ["--mode", str(mode), "--backbone", backbone, "--pre_path", untrained(mode, backbone)]
    for option, source in FROZEN[mode]:
        args += [option, untrained(source, backbone)]
    if glo and "--glo_path" not in args:
        args += ["--glo_path", untrained(0, backbone)]
    return args


def refine_and_evaluate(tiny_data, untrained, tmp_path, mode: int, backbone: str, glo: bool = True) -> dict:
    """Train a refinement of the mode's base for one epoch (with validation), then evaluate the base with
    and without it; returns {"plain": scores, "refined": scores}."""
    logs = str(tmp_path / "logs")
    common = tiny_args(tiny_data, untrained.folder, logs, *base_args(untrained, mode, backbone, glo),
                       "--backbone", backbone)
    refine = f"refine_{mode}_{backbone}"
    assert run_cli(*common, "--task_name", refine, "--train", "--val", "--refine", "--epochs", "1",
                   "--refine_crop", "32", "--refine_crops", "2", "--lr", "1e-2") == 0
    assert {f"{refine}.epoch.pth", f"{refine}.last.pth", f"{refine}.best.pth"} <= set(list_files(untrained.folder))
    scores = {}
    for row, extra in (("plain", []), ("refined", ["--refine_path", f"{refine}.epoch.pth"])):
        metrics = tmp_path / f"{row}.json"
        assert run_cli(*common, "--evaluate", "--metrics_path", str(metrics), *extra) == 0
        scores[row] = json.loads(metrics.read_text())
    return scores


def test_a_refinement_trains_and_applies_in_mode_4(tiny_data, untrained, tmp_path):
    scores = refine_and_evaluate(tiny_data, untrained, tmp_path, 4, "fpn_resnet18")
    assert scores["refined"]["confusion_matrix"] != scores["plain"]["confusion_matrix"]  # it changed something
    assert scores["refined"]["images"] == scores["plain"]["images"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("mode, backbone", [(1, "fpn_resnet18"), (2, "fpn_resnet18"), (3, "fpn_resnet18"),
                                            (5, "fpn_resnet18"), (4, "fcn8_vgg16"), (5, "fcn8_vgg16")])
def test_every_patch_mode_and_both_backbones(tiny_data, untrained, tmp_path, mode, backbone):
    """Every patch mode with the light backbone (mode 4 is in the fast tier), the two full models with FCN8."""
    scores = refine_and_evaluate(tiny_data, untrained, tmp_path, mode, backbone, glo=mode != 5)
    assert {"miou", "mboundary_iou", "seam_accuracy"} <= scores["refined"].keys()


def test_test_mode_and_scenes_apply_it_with_tta(tiny_data, untrained, tmp_path):
    common = tiny_args(tiny_data, untrained.folder, str(tmp_path / "logs"),
                       *base_args(untrained, 1, "fpn_resnet18", glo=False))
    assert run_cli(*common, "--task_name", "r1", "--train", "--refine", "--epochs", "1", "--refine_crop", "32",
                   "--refine_crops", "1") == 0
    out = tmp_path / "pred"
    assert run_cli(*common, "--refine_path", "r1.epoch.pth", "--prediction_path", str(out)) == 0
    assert len(list_files(str(out))) == 2
    scenes = tmp_path / "scenes"
    assert run_cli(*common, "--refine_path", "r1.epoch.pth", "--input", os.path.join(tiny_data, "crossvali", "Sat"),
                   "--prediction_path", str(scenes), "--save_confidence", "--output_format", "png") == 0
    assert len([f for f in list_files(str(scenes)) if f.endswith("_confidence.png")]) == 2


def test_wrong_refinements_and_options_are_one_line_errors(tiny_data, untrained, tmp_path, capsys):
    common = tiny_args(tiny_data, untrained.folder, str(tmp_path / "logs"),
                       *base_args(untrained, 1, "fpn_resnet18", glo=False))
    train = ["--train", "--refine", "--epochs", "1", "--refine_crop", "32", "--refine_crops", "1"]
    assert run_cli(*common, "--task_name", "r1", *train) == 0
    assert run_cli(*common, "--task_name", "r1g", *train, "--glo_path", untrained(0, "fpn_resnet18")) == 0
    capsys.readouterr()
    mode2 = tiny_args(tiny_data, untrained.folder, str(tmp_path / "logs"),
                      *base_args(untrained, 2, "fpn_resnet18", glo=False))
    expect_error(capsys, [*mode2, "--evaluate", "--refine_path", "r1.epoch.pth"],
                 "refines a mode-1 fpn_resnet18 model", "mode 1, not 2")
    expect_error(capsys, [*common, "--evaluate", "--refine_path", "r1g.epoch.pth"],
                 "reads the global context: give the global (mode-0) model as --glo_path")
    expect_error(capsys, [*common, "--evaluate", "--refine_path", untrained(1, "fpn_resnet18")],
                 "is not a refinement checkpoint")
    expect_error(capsys, tiny_args(tiny_data, untrained.folder, str(tmp_path / "logs"), "--mode", "1", "--pre_path",
                                   "r1.epoch.pth", "--evaluate"), "is a refinement network", "--refine_path")
    expect_error(capsys, [*common, "--refine"], "--refine trains the refinement stage: add --train")
    expect_error(capsys, [*common, "--mode", "0", "--evaluate", "--refine_path", "r1.epoch.pth"],
                 "mode 0 predicts the whole image at once")
    expect_error(capsys, [*common, *train, "--refine_crop", "0"], "--refine_crop must be at least 1")
    expect_error(capsys, [*common, *train, "--refine_context", "global"], "give it as --glo_path")
    expect_error(capsys, [*common, "--evaluate", "--refine_path", "r1.epoch.pth", "--refine_context", "none"],
                 "--refine_context chooses what a refinement trained with --refine reads")
    no_pre = tiny_args(tiny_data, untrained.folder, str(tmp_path / "logs"), "--mode", "1", "--train", "--refine")
    expect_error(capsys, no_pre, "--refine needs the trained model it refines as --pre_path")


def test_refine_context_none_trains_a_refinement_without_the_global_model(tiny_data, untrained, tmp_path):
    """Mode 4 reads the global model itself; --refine_context none keeps it out of the refinement."""
    from models.refinement import read_refinement

    common = tiny_args(tiny_data, untrained.folder, str(tmp_path / "logs"),
                       *base_args(untrained, 4, "fpn_resnet18", glo=True))
    assert run_cli(*common, "--task_name", "r4n", "--train", "--refine", "--refine_context", "none", "--epochs", "1",
                   "--refine_crop", "32", "--refine_crops", "1") == 0
    assert read_refinement(os.path.join(untrained.folder, "r4n.epoch.pth")).record.context == "none"
    assert run_cli(*common, "--evaluate", "--metrics_path", str(tmp_path / "m.json"), "--refine_path",
                   "r4n.epoch.pth") == 0
