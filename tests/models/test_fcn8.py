"""FCN8 on VGG16: layout, fixed up-samplers, forward arithmetic, sizes, ImageNet start and offline error."""

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from models.backbones import build_backbone
from models.fcn8 import FCN8, bilinear_kernel
from utils.errors import CheckpointError

N_CLASS = 7


@pytest.fixture(scope="module")
def fcn8() -> FCN8:
    torch.manual_seed(0)
    return build_backbone("fcn8_vgg16", N_CLASS).eval()


def test_bilinear_kernel() -> None:
    kernel = bilinear_kernel(3, 4)
    assert kernel.shape == (3, 3, 4, 4)
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(kernel[1, 1], torch.outer(ramp, ramp))
    off_diagonal = kernel.clone()
    off_diagonal[torch.arange(3), torch.arange(3)] = 0
    assert not off_diagonal.any()
    big = bilinear_kernel(2, 16)
    ramp16 = 1 - (torch.arange(16) - 7.5).abs() / 8
    torch.testing.assert_close(big[0, 0], torch.outer(ramp16, ramp16))


def test_layout_matches_torchvision_vgg16(fcn8: FCN8) -> None:
    with torch.device("meta"):
        reference = torchvision.models.vgg16(weights=None).features
    ours = fcn8.vgg.features
    assert len(ours) == len(reference) == 31
    for index, (mine, theirs) in enumerate(zip(ours, reference)):
        assert type(mine) is type(theirs), index
        if isinstance(mine, nn.Conv2d):
            assert mine.weight.shape == theirs.weight.shape
            assert mine.padding == ((100, 100) if index == 0 else theirs.padding)
        if isinstance(mine, nn.MaxPool2d):
            assert mine.ceil_mode and mine.kernel_size == theirs.kernel_size
    assert [n for n, _ in fcn8.named_children()] == [
        "vgg", "output", "adj_pool3", "adj_pool4", "up_output", "up_pool4_out", "up_final",
    ]
    assert not hasattr(fcn8.vgg, "classifier")
    assert [type(m) for m in fcn8.output] == [nn.Conv2d, nn.ReLU, nn.Dropout, nn.Conv2d, nn.ReLU, nn.Dropout, nn.Conv2d]
    assert fcn8.output[0].weight.shape == (4096, 512, 7, 7)
    assert fcn8.output[6].weight.shape == (N_CLASS, 4096, 1, 1)


def test_upsamplers_fixed(fcn8: FCN8) -> None:
    for layer, size, stride in ((fcn8.up_output, 4, 2), (fcn8.up_pool4_out, 4, 2), (fcn8.up_final, 16, 8)):
        assert layer.bias is None and layer.stride == (stride, stride)
        assert not layer.weight.requires_grad
        torch.testing.assert_close(layer.weight.detach(), bilinear_kernel(N_CLASS, size))


def test_head_false_builds_features_only() -> None:
    encoder = build_backbone("fcn8_vgg16", N_CLASS, head=False)
    assert [n for n, _ in encoder.named_children()] == ["vgg"]
    assert sum(p.numel() for p in encoder.parameters()) == 14_714_688
    assert encoder.top_channels == 512
    with torch.no_grad():
        skips, top = encoder.encode(torch.rand(1, 3, 40, 40))
    assert [s.shape[1] for s in skips] == [256, 512] and top.shape[1] == 512


@pytest.mark.slow  # full-size FCN8 forwards
@torch.no_grad()
def test_forward_follows_spec_arithmetic(fcn8: FCN8) -> None:
    x = torch.rand(1, 3, 50, 38)
    f = fcn8.vgg.features
    p3 = f[:17](x)
    p4 = f[17:24](p3)
    p5 = f[24:](p4)
    u = fcn8.up_output(fcn8.output(p5))
    a4 = fcn8.adj_pool4(0.01 * p4)
    s = fcn8.up_pool4_out(a4[:, :, 5:5 + u.shape[2], 5:5 + u.shape[3]] + u)
    a3 = fcn8.adj_pool3(0.0001 * p3)
    full = fcn8.up_final(a3[:, :, 9:9 + s.shape[2], 9:9 + s.shape[3]] + s)
    expected = full[:, :, 31:31 + 50, 31:31 + 38]
    torch.testing.assert_close(fcn8(x), expected)
    skips, top = fcn8.encode(x)
    torch.testing.assert_close(skips[0], p3)
    torch.testing.assert_close(top, p5)


@pytest.mark.slow  # full-size FCN8-VGG16 forwards on several inputs
def test_stem_in_chunks_without_grad(fcn8: FCN8) -> None:
    """Without autograd the full-resolution layers run ``stem_batch`` patches at a time (memory); the
    result must be that of one pass, including a last, shorter chunk."""
    x = torch.rand(2 * fcn8.stem_batch + 1, 3, 40, 40)
    batches = []
    with torch.no_grad():
        fcn8.encode(x[:1])  # builds the background plan, which runs the layers once on a zero image
    # pool1 runs as a module in every path (the padding-skipping ones call the convs as functions).
    hook = fcn8.vgg.features[4].register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            skips, top = fcn8.encode(x)
            chunked, batches[:] = list(batches), []
            whole = fcn8.vgg.features[:17](x)
        with torch.enable_grad():
            fcn8.encode(x.clone().requires_grad_())
    finally:
        hook.remove()
    assert chunked == [fcn8.stem_batch, fcn8.stem_batch, 1]
    # The reference pass, then with autograd: the background of a zero image (its plan is built for
    # that pass), then the patches in one pass.
    assert batches == [len(x), 1, len(x)]
    torch.testing.assert_close(skips[0], whole)
    torch.testing.assert_close(top, fcn8.vgg.features[17:](whole))


@pytest.mark.slow  # full-size FCN8-VGG16 forwards on several inputs
@torch.no_grad()
def test_any_size(fcn8: FCN8) -> None:
    """The 100-pixel padding makes every positive size work."""
    sizes = [(1, 1), (2, 3), (7, 31), (32, 32), (33, 17), (63, 64), (96, 80)]
    for height, width in sizes:
        assert fcn8(torch.rand(1, 3, height, width)).shape == (1, N_CLASS, height, width)
    assert fcn8(torch.rand(2, 3, 64, 64)).shape == (2, N_CLASS, 64, 64)


@pytest.mark.slow  # two FCN8 builds with ImageNet-sized weights
def test_pretrained_uses_imagenet_vgg(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(5)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    fake = {k: torch.randn(s, generator=generator) if not k.startswith("classifier.6") else torch.zeros(s)
            for k, s in shapes.items()}
    urls = []

    def fake_download(url: str, *args: object, **kwargs: object) -> dict:
        urls.append(url)
        assert kwargs.get("weights_only") is True
        return fake

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = build_backbone("fcn8_vgg16", N_CLASS, pretrained=True)
    assert urls == [torchvision.models.VGG16_Weights.IMAGENET1K_V1.url]
    for index in (0, 14, 28):
        assert torch.equal(model.vgg.features[index].weight, fake[f"features.{index}.weight"])
        assert torch.equal(model.vgg.features[index].bias, fake[f"features.{index}.bias"])
    assert model.vgg.features[0].padding == (100, 100)
    assert torch.equal(model.output[0].weight, fake["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(model.output[0].bias, fake["classifier.0.bias"])
    assert torch.equal(model.output[3].weight.flatten(1), fake["classifier.3.weight"])
    assert torch.equal(model.output[3].bias, fake["classifier.3.bias"])


def test_offline_pretrained_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(CheckpointError) as caught:
        build_backbone("fcn8_vgg16", N_CLASS, pretrained=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "`no_pretrained`" in message
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "URLError" in message
