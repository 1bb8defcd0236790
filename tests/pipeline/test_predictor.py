"""The whole-image pipeline: view geometry, TTA against the literal rotate-everything algorithm, padding."""

import pytest
import torch

from models.inputs import NetworkInputs
from option import OptionError, parse_options
from pipeline.config import PipelineConfig
from pipeline.grid import make_grid
from pipeline.merge import BandMerger, HannWindows, add_patches, argmax_classes, top_probability
from pipeline.predictor import Predictor
from pipeline.views import view_box_to_original, view_shape
from tests.cli.helpers import list_files, run_cli, tiny_args
from tests.pipeline.test_merge import hann_profile
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


# --- merge rules ------------------------------------------------------------------------------------------

MERGE_SHAPES = [(150, 130), (64, 200), (40, 90), (65, 129)]  # borders, a patch-wide side, smaller than a patch


class _Recording(Predictor):
    """A Predictor that also keeps every patch's logits as ``_run`` hands them over, in that order."""

    recorded: list

    def _run(self, source, views, build, jobs):
        logits = super()._run(source, views, build, jobs)
        self.recorded.extend((patch, top, left) for patch, (_, top, left) in zip(logits, jobs))
        return logits


def _recorded(predictor: _Recording, bands) -> torch.Tensor:
    predictor.recorded = []
    return torch.cat([band for _, band in bands], dim=-2)


def _image(shape, seed=0):
    return torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(150, 130), (40, 90), (131, 187)])
@pytest.mark.parametrize("tta", [False, True])
def test_sum_merge_is_the_plain_sum_of_the_patch_logits_bit_for_bit(shape, tta):
    predictor = _Recording(StandIn(4).eval(), PipelineConfig(64, 48, 3, 5))
    assert predictor.cfg.merge == "sum"
    for output in ("logits", "mask"):
        predictor.recorded = []
        merged = torch.cat([b for _, b in (predictor.logit_bands if output == "logits" else predictor.mask_bands)(
            _image(shape), tta=tta)], dim=-2)
        reference = torch.zeros(7, max(shape[0], 64), max(shape[1], 64))
        for patch, top, left in predictor.recorded:
            add_patches(reference, patch[None], [top], [left])
        reference = reference[:, :shape[0], :shape[1]]
        assert torch.equal(merged, reference if output == "logits" else argmax_classes(reference))


def _weights_in_each_views_frame(height: int, width: int, p: int, views) -> torch.Tensor:
    """Every view's grid laid out in the view's own frame, each patch weighted there by the written-out
    window (edges on the view's border untapered), turned back and summed: float64 (height, width)."""
    total = torch.zeros(height, width, dtype=torch.float64)
    for view in views:
        vh, vw = view_shape(height, width, view)
        canvas = torch.zeros(vh, vw, dtype=torch.float64)
        for top, left in make_grid(vh, vw, p).boxes():
            canvas[top:top + p, left:left + p] += hann_profile(top, vh, p)[:, None] * hann_profile(left, vw, p)[None, :]
        total += from_view(canvas, view)
    return total


@pytest.mark.parametrize("shape", MERGE_SHAPES)
@pytest.mark.parametrize("tta", [False, True])
def test_hann_weights_merged_are_the_windows_of_each_views_grid_and_positive(shape, tta, monkeypatch):
    fed = []
    add = BandMerger.add

    def recording_add(self, logits, top, left, weight=None):
        fed.append((weight.clone(), top, left))
        add(self, logits, top, left, weight)

    monkeypatch.setattr(BandMerger, "add", recording_add)
    predictor = Predictor(StandIn(1, channels=2).eval(), PipelineConfig(64, 48, 3, 16, merge="hann"))
    list(predictor.mask_bands(_image(shape), tta=tta, confidence=True))
    assert len(fed) == predictor.patches_per_image(*shape, tta)
    height, width = max(shape[0], 64), max(shape[1], 64)
    merged = torch.zeros(1, height, width)
    for weights, top, left in fed:
        add_patches(merged, weights[None, None], [top], [left])
    reference = _weights_in_each_views_frame(height, width, 64, predictor.views(tta))
    torch.testing.assert_close(merged[0].double(), reference, rtol=1e-5, atol=1e-6)  # float32 sums
    assert merged.min() > 0 and reference.min() > 0


def _constant_logits(mode: int, values: torch.Tensor) -> StandIn:
    model = StandIn(mode, channels=2).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(values)
    return model


@pytest.mark.parametrize("mode, shape, tta", [(4, (150, 130), True), (1, (40, 90), True), (2, (65, 129), False),
                                              (1, (64, 200), False)])
def test_hann_mean_of_constant_logits_is_that_constant_everywhere(mode, shape, tta):
    values = torch.linspace(-2, 3, 7)
    predictor = Predictor(_constant_logits(mode, values), PipelineConfig(64, 48, 3, 6, merge="hann"))
    logits = predictor.logits(_image(shape), tta=tta)
    torch.testing.assert_close(logits, values[:, None, None].expand(7, *shape), rtol=1e-5, atol=1e-5)  # float32 sums
    confidence = torch.cat([b for _, b in predictor.mask_bands(_image(shape), tta=tta, confidence=True)], dim=1)
    assert (confidence[0] == 6).all()
    assert (confidence[1] == round(255 * torch.softmax(values, 0).max().item())).all()


@pytest.mark.parametrize("sub_batch, spill_width", [pytest.param(1, 8192, marks=pytest.mark.slow), (5, 100), (13, 8192)])
def test_hann_streamed_bands_equal_the_whole_canvas(sub_batch, spill_width, monkeypatch):
    """Weighted sums and weights of the very logits the network gave, summed into whole canvases in the
    same order: the streamed mean logits, class map and confidence are the same bits."""
    monkeypatch.setattr(Predictor, "spill_width", spill_width)
    shape, p = (150, 110), 64
    predictor = _Recording(StandIn(4).eval(), PipelineConfig(p, 48, 3, sub_batch, merge="hann"))
    windows = HannWindows(p)
    tiny = torch.finfo(torch.float32).tiny
    for output in ("logits", "mask", "confidence"):
        predictor.recorded = []
        if output == "logits":
            bands = predictor.logit_bands(_image(shape), tta=True)
        else:
            bands = predictor.mask_bands(_image(shape), tta=True, confidence=output == "confidence")
        streamed = torch.cat([b for _, b in bands], dim=-2)
        sums, weights = torch.zeros(7, *shape), torch.zeros(1, *shape)
        for patch, top, left in predictor.recorded:
            weighted = patch * windows(top, left, *shape)
            add_patches(sums, weighted[None], [top], [left])
            add_patches(weights, windows(top, left, *shape)[None, None], [top], [left])
        if output == "logits":
            assert torch.equal(streamed, sums / weights.clamp(min=tiny))
        elif output == "mask":
            assert torch.equal(streamed, argmax_classes(sums))
        else:
            assert torch.equal(streamed, torch.stack([argmax_classes(sums), top_probability(sums, weights[0])]))


@pytest.mark.parametrize("tta", [False, True])
def test_hann_changes_nothing_in_the_whole_image_mode(tta):
    model = StandIn(0).eval()
    image = _image((150, 130))
    summed = Predictor(model, PipelineConfig(64, 48, 3, 4)).logits(image, tta=tta)
    assert torch.equal(Predictor(model, PipelineConfig(64, 48, 3, 4, merge="hann")).logits(image, tta=tta), summed)


def test_the_command_line_merges_with_hann_in_test_mode_and_evaluation(tiny_data, fpn_pre_folder, tmp_path,
                                                                        monkeypatch):
    weighed = []
    window = HannWindows.__call__
    monkeypatch.setattr(HannWindows, "__call__", lambda self, *box: weighed.append(box) or window(self, *box))
    args = tiny_args(tiny_data, fpn_pre_folder, str(tmp_path / "logs"), "--mode", "1", "--pre_path", "pre.pth",
                     "--max_images", "1", "--merge", "hann")
    assert run_cli(*args, "--prediction_path", str(tmp_path / "pred")) == 0  # TTA on: 8 views x 4 x 4 patches
    assert len(list_files(str(tmp_path / "pred"))) == 1 and len(weighed) == 8 * 16
    weighed.clear()
    assert run_cli(*args, "--evaluate", "--metrics_path", str(tmp_path / "metrics.json")) == 0
    assert len(weighed) == 16 and (tmp_path / "metrics.json").exists()
    assert parse_options(["--pre_path", "x.pth"]).pipeline.merge == "sum"
    assert parse_options(["--pre_path", "x.pth", "--merge", "hann"]).pipeline.merge == "hann"
    with pytest.raises(OptionError, match="--merge"):
        parse_options(["--pre_path", "x.pth", "--merge", "mean"])


@pytest.mark.parametrize("merge", ["sum", "hann"])
@pytest.mark.parametrize("mode, tta", [(0, True), (1, False), (4, True)])
def test_class_probabilities_are_the_softmax_of_the_mean_logits_with_the_same_mask_and_confidence(mode, tta, merge):
    from pipeline.merge import class_probabilities

    shape = (90, 110)
    predictor = Predictor(StandIn(mode).eval(), PipelineConfig(64, 48, 3, 8, merge=merge))
    image = _image(shape)
    probabilities = torch.cat([b for _, b in predictor.mask_bands(image, tta=tta, probabilities=True)], dim=1)
    mask = torch.cat([b for _, b in predictor.mask_bands(image, tta=tta)], dim=0)
    confidence = torch.cat([b for _, b in predictor.mask_bands(image, tta=tta, confidence=True)], dim=1)
    assert probabilities.shape == (8, *shape) and probabilities.dtype == torch.uint8
    assert torch.equal(probabilities[0], mask)
    assert torch.equal(probabilities[1:].max(dim=0).values, confidence[1])
    total = probabilities[1:].int().sum(dim=0)
    assert ((total - 255).abs() <= 7).all()  # each of the 7 values rounded on its own
    # The definition on its own: round(255 x softmax(sums / counts)), the top-1 value as top_probability.
    sums, counts = torch.randn(7, 5, 6) * 8, torch.randint(1, 9, (5, 6)).float()
    direct = (255 * torch.softmax(sums / counts, dim=0)).round()
    assert (class_probabilities(sums, counts).float() - direct).abs().max() <= 1
    assert torch.equal(class_probabilities(sums, counts).max(dim=0).values, top_probability(sums, counts))
