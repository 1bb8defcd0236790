"""FCN8's padding skip (models/padded_vgg.py): the same features as the plain VGG stack, in every use."""

from __future__ import annotations

import pytest
import torch

from models.fcn8 import FCN8
from models.padded_vgg import Extent, PaddedVGG

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fcn8() -> FCN8:
    torch.manual_seed(0)
    return FCN8(3, head=False).eval()


def _both(model: FCN8, x: torch.Tensor):
    old = FCN8.skip_padding
    try:
        FCN8.skip_padding = False
        plain = model.encode(x)
        FCN8.skip_padding = True
        skipped = model.encode(x)
    finally:
        FCN8.skip_padding = old
    return plain, skipped


def _close(plain, skipped) -> None:
    for a, b in zip([*plain[0], plain[1]], [*skipped[0], skipped[1]]):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 40, 40), (1, 3, 64, 96), (3, 3, 100, 100), (1, 3, 97, 71)])
def test_same_features_for_any_input_shape(fcn8, shape):
    torch.manual_seed(1)
    with torch.no_grad():
        _close(*_both(fcn8, torch.rand(shape)))


def test_the_skip_is_taken_and_the_constant_is_right(fcn8):
    # Where the receptive field is wholly in the padding, the map holds the tracked constant.
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out, constant, extent = PaddedVGG.start(fcn8.vgg.features[0], x)
        out, constant, extent = PaddedVGG.run(fcn8.vgg.features[1:5], out, constant, extent)
    assert extent.core is not None and extent.share() < 1
    inside = torch.ones(out.shape[2:], dtype=torch.bool)
    for top, bottom, left, right in extent.boxes():
        inside[top:bottom, left:right] = False
    assert inside.any()
    torch.testing.assert_close(out[0][:, inside], constant[:, None].expand(-1, int(inside.sum())))


def test_gradients_match():
    torch.manual_seed(2)
    encoder = FCN8(3, head=False)
    x = torch.rand(1, 3, 32, 32)
    grads = []
    for skip in (False, True):
        FCN8.skip_padding = skip
        try:
            encoder.zero_grad()
            (p3, p4), p5 = encoder.encode(x)
            (p3.sum() + p4.sum() + (p5 ** 2).sum()).backward()
            grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
        finally:
            FCN8.skip_padding = True
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5)


def test_channels_last_and_bf16_autocast(fcn8):
    torch.manual_seed(3)
    x = torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model = FCN8(3, head=False).eval().to(memory_format=torch.channels_last)
    model.load_state_dict(fcn8.state_dict())
    with torch.no_grad():
        plain, skipped = _both(model, x)
        _close(plain, skipped)
        assert skipped[1].is_contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, skipped = _both(model, x)
    for a, b in zip([*plain[0], plain[1]], [*skipped[0], skipped[1]]):
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(b.float(), a.float(), rtol=0.05, atol=0.05)


def test_extent_boxes():
    extent = Extent(10, 12, (3, 6, 4, 8), 2)
    boxes = extent.boxes()
    covered = torch.zeros(10, 12, dtype=torch.bool)
    for top, bottom, left, right in boxes:
        covered[top:bottom, left:right] = True
    assert covered[3:6, 4:8].all() and covered[:2].all() and covered[-2:].all()
    assert covered[:, :2].all() and covered[:, -2:].all() and not covered[2, 2]
