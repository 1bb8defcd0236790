"""create_model: the checkpoints of each mode land in the right part, with the right strictness."""

import logging
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_weights
from models.fctl import FCtLNet
from models.inputs import NetworkInputs
from models.setup import create_model
from utils.errors import CheckpointError

BACKBONE = "fpn_resnet18"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("setup")
    paths = {}
    for seed, (name, mode) in enumerate((("pre", 1), ("medium", 2), ("global", 0), ("all", 4))):
        torch.manual_seed(seed)
        paths[name] = folder / f"{name}.pth"
        save_weights(FCtLNet(mode, BACKBONE), paths[name])
    return paths


def saved(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, mmap=True, weights_only=True)


def test_mode4_training_from_pre(files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="models.setup"):
        model = create_model(4, BACKBONE, pre_path=files["pre"], c_path=files["medium"], glo_path=files["global"],
                             training=True)
    assert model.training and not model.context_encoder.training
    assert "starting fresh: local, medium, large, fusion" in caplog.text
    assert torch.equal(model.backbone.head[3].weight, saved(files["pre"])["module.head.3.weight"])
    assert torch.equal(model.context_encoder.body.conv1.weight, saved(files["medium"])["module.body.conv1.weight"])
    assert torch.equal(model.global_encoder.top[0].weight, saved(files["global"])["module.top.0.weight"])
    assert float(model.local.gamma.detach()) == 0.0


def test_testing_needs_complete_files(files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="`pre_path` .* lacks local, medium, large, fusion"):
        create_model(4, BACKBONE, pre_path=files["pre"], c_path=files["medium"], glo_path=files["global"])
    model = create_model(4, BACKBONE, pre_path=files["all"], c_path=files["medium"], glo_path=files["global"])
    assert not model.training
    assert torch.equal(model.fusion.trans.weight, saved(files["all"])["module.trans.weight"])


def test_unused_and_absent_paths_are_logged(files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.setup"):
        model = create_model(3, BACKBONE, c_path=files["medium"], training=True)
    assert "`c_path` is not used in mode 3" in caplog.text
    assert "mode 3 without `glo_path`" in caplog.text
    assert model.mode == 3 and model.training


def test_pretrained_skipped_when_pre_path_given(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("ImageNet weights must not be fetched when --pre_path overwrites them")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_download)
    model = create_model(1, BACKBONE, pre_path=files["pre"], training=True, pretrained=True)
    assert torch.equal(model.backbone.body.conv1.weight, saved(files["pre"])["module.body.conv1.weight"])


def test_inference_loads_every_part_and_keeps_frozen_parts_frozen(files: dict[str, Path]) -> None:
    model = create_model(4, BACKBONE, pre_path=files["all"], c_path=files["medium"], glo_path=files["global"])
    assert not model.training
    state = model.state_dict()
    for name, file, prefix in (("all", files["all"], ""), ("medium", files["medium"], "context_encoder."),
                               ("global", files["global"], "global_encoder.")):
        for key, value in saved(file).items():
            if key == "_fctl":
                continue
            ours = key.removeprefix("module.")
            if prefix:
                if not ours.startswith("body.") and not ours.startswith("top."):
                    continue  # the encoders take only the backbone body and top reduction
                ours = prefix + ours
            elif not ours.startswith(("local.", "medium.", "large.")) and not ours.startswith(("in_", "trans", "out_")):
                ours = "backbone." + ours
            else:
                ours = ours if ours.startswith(("local.", "medium.", "large.")) else "fusion." + ours
            assert torch.equal(state[ours], value), (name, key)
    assert all(not p.requires_grad for enc in model.frozen_encoders() for p in enc.parameters())
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64), NetworkInputs(medium=torch.rand(2, 3, 64, 64),
                    global_context=model.encode_global(torch.rand(1, 3, 64, 64))))
    assert out.shape == (2, 7, 64, 64)
