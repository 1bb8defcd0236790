"""Networks of more than three bands: the widened first convolution, normalisation, checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

from models.bands import IMAGENET_MEAN, RGB, InputBands, widen_first_conv
from models.checkpoint import save_weights
from models.setup import create_model
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor
from utils.errors import CheckpointError

FOUR = InputBands.of(4, [0.4], [0.2])


def test_the_widened_convolution_keeps_rgb_and_gives_further_bands_the_grey_kernel():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=100)
    wide = widen_first_conv(conv, 5)
    assert wide.weight.shape == (8, 5, 3, 3) and wide.padding == (100, 100)
    assert torch.equal(wide.weight[:, :3], conv.weight) and torch.equal(wide.bias, conv.bias)
    for band in (3, 4):
        assert torch.allclose(wide.weight[:, band], conv.weight.mean(1))
    assert widen_first_conv(conv, 3) is conv
    # An image whose further bands are zero is seen exactly as the 3-band convolution sees it.
    x = torch.rand(1, 3, 12, 12)
    assert torch.allclose(wide(torch.cat([x, torch.zeros(1, 2, 12, 12)], 1)), conv(x), atol=1e-6)


def test_input_bands_record_and_checks():
    assert RGB.is_rgb and RGB.mean == IMAGENET_MEAN and InputBands.from_record(None) == RGB
    assert InputBands.from_record(FOUR.record()) == FOUR and not FOUR.is_rgb and FOUR.mean[3] == 0.4
    with pytest.raises(ValueError):
        InputBands(2, (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(ValueError):
        InputBands(4, (0.5,) * 4, (0.2, 0.2, 0.2, 0.0))
    x = torch.rand(2, 4, 3, 3)
    expected = (x - torch.tensor(FOUR.mean).view(1, 4, 1, 1)) / torch.tensor(FOUR.std).view(1, 4, 1, 1)
    assert torch.allclose(FOUR.normalise(x), expected)


@pytest.mark.parametrize("backbone", ["fpn_resnet18", pytest.param("fcn8_vgg16", marks=pytest.mark.slow)])
def test_every_mode_predicts_four_bands_and_its_file_keeps_them(backbone, tmp_path):
    image = torch.randint(0, 256, (4, 90, 80), dtype=torch.uint8)
    for mode in range(6):
        torch.manual_seed(mode)
        model = create_model(mode, backbone, bands=FOUR, training=True).eval()
        assert all(e.bands == FOUR for e in model.frozen_encoders())
        out = Predictor(model, PipelineConfig(64, 64, 2, 4)).logits(image)
        assert out.shape == (7, 90, 80) and torch.isfinite(out).all()
        path = str(tmp_path / f"{backbone}_{mode}.pth")
        save_weights(model, path)
        again = create_model(mode, backbone, pre_path=path, bands=None)  # predicting: the file's bands
        assert again.bands == FOUR
        assert torch.equal(Predictor(again, PipelineConfig(64, 64, 2, 4)).logits(image), out)
        del again
        os.remove(path)  # FCN8's files are hundreds of MB each


def test_a_file_of_other_bands_is_refused_and_statistics_come_from_the_file(tmp_path):
    four = str(tmp_path / "four.pth")
    save_weights(create_model(1, "fpn_resnet18", bands=FOUR, training=True), four)
    with pytest.raises(CheckpointError, match="reads 4 bands .* but this model reads 3 bands"):
        create_model(1, "fpn_resnet18", pre_path=four)
    three = str(tmp_path / "three.pth")
    save_weights(create_model(1, "fpn_resnet18", training=True), three)
    with pytest.raises(CheckpointError, match="reads 3 bands .* but this model reads 4 bands"):
        create_model(1, "fpn_resnet18", pre_path=three, bands=FOUR)
    assert "bands" not in torch.load(three, weights_only=False, mmap=True)["_fctl"]  # RGB files stay as they were
    other_stats = InputBands.of(4, [0.9], [0.5])
    model = create_model(1, "fpn_resnet18", pre_path=four, bands=other_stats)
    assert model.bands == FOUR and model.backbone.bands == FOUR
    # A frozen encoder of another band count is refused too.
    with pytest.raises(CheckpointError, match="reads 3 bands"):
        create_model(4, "fpn_resnet18", glo_path=three, bands=FOUR, training=True)

