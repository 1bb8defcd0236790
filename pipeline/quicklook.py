"""Quicklooks: a small picture of a scene and its prediction, side by side, made while streaming.

People look at a scene before they load it in a GIS. The preview is the scene (left) and the scene
with the class colours laid over it at half opacity (right), at most ``MAX_SIDE`` pixels wide in all.
Neither half needs the full-size scene or mask: the scene half is one strip pass through the image
source (antialiased, as the global view), the mask half keeps, from each band as it streams past, the
rows and columns nearest to the preview's pixel centres.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.contexts import resize_in_strips
from pipeline.sources import ImageSource

MAX_SIDE = 2048


def preview_size(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(rows, columns) of each half: the scene's aspect ratio, both halves together at most ``max_side`` wide
    and at most ``max_side`` high, never larger than the scene."""
    scale = min(1.0, max_side / 2 / width, max_side / height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def scene_thumbnail(source: ImageSource, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, *size) of the whole scene (its first three bands: R, G, B), resized strip by strip."""
    small = resize_in_strips(lambda top, bottom: source.strip(top, bottom, source.width)[:3], 3, source.height,
                             source.width, size, source.device)[0]
    return small.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


class MaskThumbnail:
    """Collects the nearest-neighbour thumbnail (rows, columns) of a class map that arrives in bands."""

    def __init__(self, height: int, width: int, size: tuple[int, int]) -> None:
        rows, cols = size
        self.height = height
        self._rows = ((torch.arange(rows, dtype=torch.float64) + 0.5) * height / rows).long().clamp_(max=height - 1)
        self._cols = ((torch.arange(cols, dtype=torch.float64) + 0.5) * width / cols).long().clamp_(max=width - 1)
        self.image = torch.zeros(size, dtype=torch.uint8)

    def add(self, top: int, band: torch.Tensor) -> None:
        """band: uint8 (h, width), rows [top, top + h) of the class map."""
        picked = ((self._rows >= top) & (self._rows < top + band.shape[0])).nonzero().flatten()
        if picked.numel():
            rows = (self._rows[picked] - top).to(band.device)
            self.image[picked] = band.index_select(0, rows).index_select(1, self._cols.to(band.device)).cpu()


def compose(scene: torch.Tensor, mask: torch.Tensor, palette: np.ndarray, nodata: int | None = None) -> np.ndarray:
    """uint8 (rows, 2 x columns, 3): the scene, then the scene with the class colours over it at half opacity
    (pixels equal to ``nodata`` show the scene alone)."""
    rgb = scene.permute(1, 2, 0).cpu().numpy()
    index = mask.numpy()
    colours = palette[np.minimum(index, len(palette) - 1)]
    overlay = ((rgb.astype(np.uint16) + colours.astype(np.uint16) + 1) // 2).astype(np.uint8)
    if nodata is not None:
        overlay[index == nodata] = rgb[index == nodata]
    return np.concatenate([rgb, overlay], axis=1)
