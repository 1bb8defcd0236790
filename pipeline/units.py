"""Training units: what one forward pass of training sees, cut from a labelled image on its device.

A unit is (x, y, medium, global_context, large_window): x (B, 3, p, p) float patches in [0, 1], y
(B, p, p) int64 labels, the medium windows (B, 3, p, p) when the mode reads them (else None), the global
context (1, C', hg, wg) of the image when the mode reads it (else None), computed once per image, and
the large windows (B, 3, p, p) of mode 5 (else None). Patches are
taken on the same grid as at test time (``pipeline.grid``), row-major, ``sub_batch_size`` at a time,
and built lazily so that only one sub-batch of crops and contexts exists at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from pipeline.contexts import crop_patches, global_view, medium_contexts
from pipeline.grid import make_grid, pad_to_min

Unit = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def patch_boxes(image: torch.Tensor, label: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(image, label (1, H, W), boxes) with both padded to at least p x p and the grid's (top, left) boxes."""
    image, _ = pad_to_min(image, p)
    label, _ = pad_to_min(label[None], p)
    return image, label, make_grid(image.shape[-2], image.shape[-1], p).boxes()


def patch_units(net: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, *, size_p: int, size_g: int,
                context: int, sub_batch_size: int, context2: int = 3) -> Iterator[Unit]:
    """The units of one image (3, H, W) uint8 and its label (H, W) for the patch modes of ``net``."""
    image, label, boxes = patch_boxes(image, label, size_p)
    g_context = None
    if net.needs_global:
        with torch.no_grad():
            g_context = net.encode_global(global_view(image, size_g))
    for start in range(0, len(boxes), sub_batch_size):
        rows = [t for t, _ in boxes[start:start + sub_batch_size]]
        cols = [c for _, c in boxes[start:start + sub_batch_size]]
        x = crop_patches(image, rows, cols, size_p).float().div_(255)
        y = crop_patches(label, rows, cols, size_p)[:, 0].long()
        medium = medium_contexts(image, rows, cols, size_p, context) if net.needs_medium else None
        large = medium_contexts(image, rows, cols, size_p, context2) if net.spec.needs_large_window else None
        yield x, y, medium, g_context, large


def whole_image_units(images: list[torch.Tensor], labels: list[torch.Tensor], *, size_g: int,
                      sub_batch_size: int) -> Iterator[Unit]:
    """Whole-image modes: the resized images (labels resized nearest), ``sub_batch_size`` at a time."""
    xs = torch.cat([global_view(im, size_g) for im in images])
    ys = torch.stack([F.interpolate(lb[None, None].float(), size=(size_g, size_g), mode="nearest")[0, 0]
                      for lb in labels]).long()
    for start in range(0, len(xs), sub_batch_size):
        yield xs[start:start + sub_batch_size], ys[start:start + sub_batch_size], None, None, None
