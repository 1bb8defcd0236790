"""The one builder of what a network reads besides its patches, against direct computations."""

from __future__ import annotations

import pytest
import torch

from models.modes import MODES
from pipeline.config import PipelineConfig
from pipeline.contexts import context_windows, global_view
from pipeline.grid import make_grid
from pipeline.inputs import InputBuilder, largest_window, window_sides
from pipeline.units import TrainingUnit, patch_units, whole_image_units
from tools.stand_in import StandIn
from utils.dihedral import VIEWS, to_view

CFG = PipelineConfig(size_p=32, size_g=24, context=3, sub_batch_size=4, context2=2)


def _image(height: int = 70, width: int = 90) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_builder_gives_exactly_what_the_mode_reads(mode: int) -> None:
    net = StandIn(mode).eval()
    image = _image()
    jobs = [(0, 0, 0), (0, 20, 40), (0, 38, 58)]
    inputs = InputBuilder(net, image, CFG)(jobs)
    present = {name for name in ("medium", "global_context", "large_window") if getattr(inputs, name) is not None}
    assert present == set(MODES[mode].extra_inputs)
    tops, lefts = [t for _, t, _ in jobs], [l for _, _, l in jobs]
    if inputs.medium is not None:
        assert torch.equal(inputs.medium, context_windows(image, tops, lefts, 32, CFG.context))
    if inputs.large_window is not None:
        assert torch.equal(inputs.large_window, context_windows(image, tops, lefts, 32, CFG.context2))
    if inputs.global_context is not None:
        assert torch.equal(inputs.global_context, net.encode_global(global_view(image, CFG.size_g)))


def test_with_views_each_job_gets_its_views_windows_and_global_context() -> None:
    net = StandIn(4).eval()
    image = _image()
    views = list(VIEWS)
    jobs = [(3, 10, 12), (0, 10, 12), (5, 0, 40)]
    inputs = InputBuilder(net, image, CFG, views=views, memory_format=torch.channels_last)(jobs)
    plain = context_windows(image, [10, 10, 0], [12, 12, 40], 32, CFG.context)
    for i, (vi, _, _) in enumerate(jobs):
        assert torch.equal(inputs.medium[i], to_view(plain[i], views[vi]))
        small = global_view(image, CFG.size_g)
        # channels_last convolutions may round differently
        torch.testing.assert_close(inputs.global_context[i], net.encode_global(to_view(small, views[vi]))[0])
    assert inputs.medium.is_contiguous(memory_format=torch.channels_last)


def test_window_sides_follow_the_mode() -> None:
    assert window_sides(MODES[1], CFG) == {} and largest_window(MODES[1], CFG) == 32
    assert window_sides(MODES[4], CFG) == {"medium": 96} and largest_window(MODES[3], CFG) == 32
    assert window_sides(MODES[5], CFG) == {"medium": 96, "large_window": 64} and largest_window(MODES[5], CFG) == 96


def test_training_units_are_named_values_with_the_builders_inputs() -> None:
    net = StandIn(5).eval()
    cfg = PipelineConfig(size_p=64, size_g=24, context=3, sub_batch_size=4, context2=2)
    image, label = _image(150, 130), torch.randint(0, 7, (150, 130), dtype=torch.uint8)
    units = list(patch_units(net, image, label, cfg))
    assert all(isinstance(u, TrainingUnit) for u in units)
    assert sum(len(u.x) for u in units) == len(make_grid(150, 130, 64).boxes()) and units[0].x.shape == (4, 3, 64, 64)
    assert units[0].y.dtype == torch.int64 and units[0].inputs.medium.shape == (4, 3, 64, 64)
    assert units[0].inputs.global_context is None
    whole = list(whole_image_units([image], [label], cfg))
    assert len(whole) == 1 and whole[0].x.shape == (1, 3, 24, 24) and whole[0].inputs.medium is None


def test_patch_padding_of_a_small_image_is_class_0_or_the_ignore_value():
    from pipeline.units import patch_boxes
    from utils.labels import IGNORE_INDEX

    image = torch.full((3, 5, 7), 9, dtype=torch.uint8)
    label = torch.ones(5, 7, dtype=torch.uint8)
    padded_image, released, boxes = patch_boxes(image, label, 8)
    assert boxes == [(0, 0)] and padded_image[:, 5:].sum() == 0 and released[0, 5:].sum() == 0
    _, ignored, _ = patch_boxes(image, label, 8, IGNORE_INDEX)
    assert (ignored[0, 5:] == IGNORE_INDEX).all() and (ignored[0, :, 7:] == IGNORE_INDEX).all()
    assert (ignored[0, :5, :7] == 1).all()
