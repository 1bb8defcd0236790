"""ResNet-FPN backbones: interface, sizes, head=False, parameter counts, ImageNet start, offline error."""

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from models.backbones import BACKBONES, build_backbone, build_context_encoder
from utils.errors import CheckpointError, ConfigError

N_CLASS = 7
# Measured: parameters of the full backbone (head=True, 7 classes) and of the head=False encoder.
PARAMS = {"fpn_resnet18": (12_137_671, 11_308_096), "fpn_resnet50": (25_034_439, 24_032_832)}


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("fpn_resnet18", N_CLASS)


def test_registry() -> None:
    assert BACKBONES == ("fcn8_vgg16", "fpn_resnet18", "fpn_resnet50")
    with pytest.raises(ConfigError, match="fpn_resnet18"):
        build_backbone("resnet7", N_CLASS)


def test_resnet18_interface_and_sizes(resnet18: torch.nn.Module) -> None:
    assert resnet18.top_channels == 256 and resnet18.name == "fpn_resnet18"
    resnet18.eval()
    with torch.no_grad():
        skips, top = resnet18.encode(torch.rand(2, 3, 64, 96))
        assert [tuple(s.shape[1:]) for s in skips] == [(64, 16, 24), (128, 8, 12), (256, 4, 6)]
        assert top.shape == (2, 256, 2, 3)
        for height, width in ((64, 64), (96, 80), (33, 33), (45, 130)):
            assert resnet18(torch.rand(1, 3, height, width)).shape == (1, N_CLASS, height, width)


def test_any_size_trains_with_batch_one(resnet18: torch.nn.Module) -> None:
    """GroupNorm normalises over channel groups, so even a 1x1 patch in a batch of one trains
    (BatchNorm needed 33 px: more than one value per channel at stride 32)."""
    resnet18.train()
    for height, width in ((1, 1), (1, 2), (5, 3), (33, 17)):
        out = resnet18(torch.rand(1, 3, height, width))
        assert out.shape == (1, N_CLASS, height, width)
        out.sum().backward()
    resnet18.zero_grad(set_to_none=True)


def test_no_batch_statistics(resnet18: torch.nn.Module) -> None:
    """A patch's output in training must not depend on the other patches of its batch (they come from
    the same image, and batch statistics would leak that image to every patch), and training and
    evaluation must compute the same function."""
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in resnet18.modules())
    torch.manual_seed(1)
    patches = torch.rand(4, 3, 40, 40)
    resnet18.train()
    with torch.no_grad():
        together = resnet18(patches)
        alone = resnet18(patches[:1])
        resnet18.eval()
        evaluated = resnet18(patches[:1])
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(evaluated, alone, rtol=1e-4, atol=1e-5)


def test_resnet50_once() -> None:
    torch.manual_seed(0)
    model = build_backbone("fpn_resnet50", N_CLASS).eval()
    assert model.top_channels == 256
    assert sum(p.numel() for p in model.parameters()) == PARAMS["fpn_resnet50"][0]
    with torch.no_grad():
        skips, top = model.encode(torch.rand(1, 3, 64, 64))
        assert [s.shape[1] for s in skips] == [256, 512, 1024] and top.shape == (1, 256, 2, 2)
        assert model(torch.rand(1, 3, 64, 48)).shape == (1, N_CLASS, 64, 48)


@pytest.mark.parametrize("name", ["fpn_resnet18", "fpn_resnet50"])
def test_head_false_and_param_counts(name: str) -> None:
    encoder = build_backbone(name, N_CLASS, head=False)
    assert [n for n, _ in encoder.named_children()] == ["body", "top"]
    assert not hasattr(encoder, "fpn") and not hasattr(encoder, "head")
    assert sum(p.numel() for p in encoder.parameters()) == PARAMS[name][1]
    assert "fc.weight" not in dict(encoder.named_parameters())


@pytest.mark.parametrize("name", ["fpn_resnet18", "fpn_resnet50"])
def test_context_encoder_is_the_whole_network(name: str) -> None:
    """The FPN context is read from the head, so a frozen FPN encoder keeps it."""
    encoder = build_context_encoder(name, N_CLASS)
    assert encoder.has_head and encoder.context_channels == 128
    assert sum(p.numel() for p in encoder.parameters()) == PARAMS[name][0]


def test_resnet18_full_param_count(resnet18: torch.nn.Module) -> None:
    assert sum(p.numel() for p in resnet18.parameters()) == PARAMS["fpn_resnet18"][0]


def test_pretrained_uses_imagenet_resnet(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(3)
    fake = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
            for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda url, *a, **k: fake)
    model = build_backbone("fpn_resnet18", N_CLASS, pretrained=True)
    assert torch.equal(model.body.conv1.weight, fake["conv1.weight"])
    # BatchNorm scale/shift become the GroupNorm's; the running statistics have nowhere to go.
    assert isinstance(model.body.layer4[1].bn2, torch.nn.GroupNorm)
    assert torch.equal(model.body.layer4[1].bn2.weight, fake["layer4.1.bn2.weight"])
    assert torch.equal(model.body.bn1.bias, fake["bn1.bias"])
    assert not any(name.endswith("running_var") for name, _ in model.named_buffers())


def test_offline_pretrained_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(CheckpointError) as caught:
        build_backbone("fpn_resnet50", N_CLASS, pretrained=True)
    message = str(caught.value)
    assert "\n" not in message and "`no_pretrained`" in message
    assert str(tmp_path / "checkpoints" / "resnet50-0676ba61.pth") in message
