"""Training units: what one forward pass of training sees, cut from a labelled image on its device.

A ``TrainingUnit`` holds the patches x (B, 3, p, p) float in [0, 1], their labels y (B, p, p) int64
and the ``NetworkInputs`` the mode reads (``pipeline.inputs``: windows cut per sub-batch, the global
context once per image). Patches are taken on the same grid as at test time (``pipeline.grid``),
row-major, ``sub_batch_size`` at a time, and built lazily so that only one sub-batch of crops and
contexts exists at a time. Whole-image modes train on the resized images and read nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.inputs import NO_INPUTS, NetworkInputs
from models.interfaces import SegmentationNetwork
from pipeline.config import PipelineConfig
from pipeline.contexts import crop_patches, global_view
from pipeline.grid import make_grid, pad_to_min
from pipeline.inputs import InputBuilder


@dataclass(frozen=True, eq=False)
class TrainingUnit:
    """One forward pass of training: patches ``x`` (B, 3, p, p) float in [0, 1], labels ``y`` (B, p, p)
    int64, and what the network reads besides the patches."""

    x: torch.Tensor
    y: torch.Tensor
    inputs: NetworkInputs = NO_INPUTS


def patch_boxes(image: torch.Tensor, label: torch.Tensor, p: int,
                label_fill: int = 0) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(image, label (1, H, W), boxes) with both padded to at least p x p (the image with zeros, the label
    with ``label_fill``: class 0 as the releases do, or the ignore value) and the grid's (top, left) boxes."""
    image, _ = pad_to_min(image, p)
    label, _ = pad_to_min(label[None], p, label_fill)
    return image, label, make_grid(image.shape[-2], image.shape[-1], p).boxes()


def patch_units(net: SegmentationNetwork, image: torch.Tensor, label: torch.Tensor,
                cfg: PipelineConfig, label_fill: int = 0) -> Iterator[TrainingUnit]:
    """The units of one image (3, H, W) uint8 and its label (H, W) for the patch modes of ``net``
    (``label_fill``: the label of the padding of an image smaller than a patch)."""
    size_p = cfg.size_p
    image, label, boxes = patch_boxes(image, label, size_p, label_fill)
    build = InputBuilder(net, image, cfg)
    for start in range(0, len(boxes), cfg.sub_batch_size):
        batch = boxes[start:start + cfg.sub_batch_size]
        rows, cols = [t for t, _ in batch], [c for _, c in batch]
        x = crop_patches(image, rows, cols, size_p).float().div_(255)
        y = crop_patches(label, rows, cols, size_p)[:, 0].long()
        yield TrainingUnit(x, y, build([(0, t, c) for t, c in batch]))


def whole_image_units(images: list[torch.Tensor], labels: list[torch.Tensor],
                      cfg: PipelineConfig) -> Iterator[TrainingUnit]:
    """Whole-image modes: the resized images (labels resized nearest), ``sub_batch_size`` at a time."""
    size_g = cfg.size_g
    xs = torch.cat([global_view(im, size_g) for im in images])
    ys = torch.stack([F.interpolate(lb[None, None].float(), size=(size_g, size_g), mode="nearest")[0, 0]
                      for lb in labels]).long()
    for start in range(0, len(xs), cfg.sub_batch_size):
        yield TrainingUnit(xs[start:start + cfg.sub_batch_size], ys[start:start + cfg.sub_batch_size])
