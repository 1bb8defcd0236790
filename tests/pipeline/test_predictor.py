"""The whole-image pipeline: view geometry, TTA against the literal rotate-everything algorithm, padding."""

import pytest
import torch

from models.inputs import NetworkInputs
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor
from pipeline.views import view_box_to_original, view_shape
from tools.stand_in import StandIn
from utils.dihedral import VIEWS, from_view, to_view


@pytest.mark.parametrize("view", VIEWS)
def test_view_box_maps_to_the_same_pixels(view):
    height, width, size = 23, 37, 9
    image = torch.arange(height * width).reshape(1, height, width)
    seen = to_view(image, view)
    vh, vw = view_shape(height, width, view)
    assert seen.shape[-2:] == (vh, vw)
    for top, left in [(0, 0), (vh - size, vw - size), (5, 11), (vh - size, 3)]:
        r, c = view_box_to_original(top, left, size, height, width, view)
        crop = image[:, r:r + size, c:c + size]
        assert torch.equal(to_view(crop, view), seen[:, top:top + size, left:left + size])


def _literal_tta(model, image, cfg):
    """The released algorithm, without its cropping defect: rotate the whole image, run, rotate back."""
    single = Predictor(model, cfg)
    total = torch.zeros(model.n_class, *image.shape[-2:])
    for view in VIEWS:
        total += from_view(single.logits(to_view(image, view), tta=False), view)
    return total


@pytest.mark.parametrize("mode", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(150, 150), (131, 187)])
def test_tta_equals_rotating_the_whole_image(mode, shape):
    torch.manual_seed(1)
    model = StandIn(mode).eval()
    image = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    cfg = PipelineConfig(size_p=64, size_g=48, context=3, sub_batch_size=5)
    ours = Predictor(model, cfg).logits(image, tta=True)
    reference = _literal_tta(model, image, cfg)
    assert ours.shape == (7, *shape)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_sub_batch_size_does_not_change_the_result():
    model = StandIn(4).eval()
    image = torch.randint(0, 256, (3, 140, 170), dtype=torch.uint8)
    a = Predictor(model, PipelineConfig(64, 48, 3, 1)).logits(image, tta=True)
    b = Predictor(model, PipelineConfig(64, 48, 3, 13)).logits(image, tta=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_image_smaller_than_a_patch_is_padded_and_cropped_back():
    model = StandIn(4).eval()
    image = torch.randint(0, 256, (3, 40, 90), dtype=torch.uint8)
    pred = Predictor(model, PipelineConfig(64, 48, 3, 4)).predict(image, tta=True)
    assert pred.shape == (40, 90) and pred.dtype == torch.uint8
    assert int(pred.max()) < 7


def test_patch_count_matches_the_grid():
    model = StandIn(1).eval()
    predictor = Predictor(model, PipelineConfig(508, 508, 3, 6))
    assert predictor.patches_per_image(2448, 2448, tta=False) == 36
    assert predictor.patches_per_image(2448, 2448, tta=True) == 36 * 8


@pytest.mark.parametrize("mode", [1, 2, 4])
def test_single_view_equals_a_direct_patch_loop(mode):
    """No TTA: the grid's patches, each run once and summed into a full canvas, as the original does."""
    from pipeline.contexts import context_windows, crop_patches, global_view
    from pipeline.grid import make_grid

    model = StandIn(mode).eval()
    image = torch.randint(0, 256, (3, 157, 203), dtype=torch.uint8)
    p = 64
    reference = torch.zeros(7, 157, 203)
    g_context = model.encode_global(global_view(image.float() / 255, 48)) if "global_context" in model.spec.extra_inputs else None
    with torch.no_grad():
        for top, left in make_grid(157, 203, p).boxes():
            x = crop_patches(image.float() / 255, [top], [left], p)
            medium = context_windows(image.float() / 255, [top], [left], p, 3) if "medium" in model.spec.extra_inputs else None
            reference[:, top:top + p, left:left + p] += model(x, NetworkInputs(medium, g_context))[0]
    ours = Predictor(model, PipelineConfig(p, 48, 3, 7)).logits(image)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_bands_cover_the_image_once_and_stay_small():
    model = StandIn(1).eval()
    image = torch.randint(0, 256, (3, 700, 90), dtype=torch.uint8)
    predictor = Predictor(model, PipelineConfig(64, 48, 3, 3))
    bands = list(predictor.mask_bands(image, tta=True))
    assert bands[0][0] == 0
    for (y0, band), (y1, _) in zip(bands, bands[1:]):
        assert y0 + band.shape[0] == y1
    assert sum(band.shape[0] for _, band in bands) == 700
    assert max(band.shape[0] for _, band in bands) <= 64
    assert torch.equal(torch.cat([b for _, b in bands]), predictor.predict(image, tta=True))
