"""DeepGlobe land-cover classes, their colours, and conversion between colour masks and class indices.

The official DeepGlobe masks are RGB images that use exactly seven colours (every channel 0 or 255);
the network and the metrics work on class indices 0..6. Conversion is exact: a colour that is not in
the palette (for example a mask saved as JPEG, whose compression blurs colours) is an error, never
rounded to the nearest class, because a silently wrong label is worse than a stopped run.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch

from utils.errors import DataError

CLASS_NAMES: tuple[str, ...] = (
    "unknown",
    "urban",
    "agriculture",
    "rangeland",
    "forest",
    "water",
    "barren",
)
N_CLASSES = 7

PALETTE = np.array(
    [
        (0, 0, 0),
        (0, 255, 255),
        (255, 255, 0),
        (255, 0, 255),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 255),
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

# Palette colours packed as r<<16 | g<<8 | b, sorted, with the class index of each entry; packing turns
# the per-pixel three-channel comparison into one integer search.
_PACKED = (PALETTE[:, 0].astype(np.int32) << 16) | (PALETTE[:, 1].astype(np.int32) << 8) | PALETTE[:, 2]
_ORDER = np.argsort(_PACKED)
_SORTED_CODES = _PACKED[_ORDER]
_SORTED_CLASSES = _ORDER.astype(np.uint8)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack an (..., 3) uint8 array into one int32 per pixel: r<<16 | g<<8 | b."""
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]


def colour_to_index(rgb: np.ndarray, path: str) -> np.ndarray:
    """Map an RGB colour mask to class indices, accepting only the exact palette colours.

    rgb: uint8 (H, W, 3). path: the file the mask came from, named in the error.
    Returns uint8 (H, W) with values 0..6. Raises DataError naming the file, the first colour that is not
    in the palette (in row-major order), where it is, and how many pixels have such colours.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"colour_to_index expects (H, W, 3), got {rgb.shape}")
    codes = pack_rgb(rgb)
    pos = np.searchsorted(_SORTED_CODES, codes)
    np.minimum(pos, len(_SORTED_CODES) - 1, out=pos)
    known = _SORTED_CODES[pos] == codes
    if not known.all():
        bad = ~known
        count = int(bad.sum())
        first = int(np.flatnonzero(bad)[0])
        row, col = divmod(first, rgb.shape[1])
        colour = tuple(int(c) for c in rgb[row, col])
        raise DataError(
            f"{path}: {count} of {codes.size} pixels have colours outside the DeepGlobe palette "
            f"(first: RGB {colour} at row {row}, column {col}); a mask must hold the exact class colours "
            f"or class indices 0..{N_CLASSES - 1} and be saved losslessly (PNG, not JPEG)"
        )
    return _SORTED_CLASSES[pos]


@overload
def index_to_colour(index: np.ndarray) -> np.ndarray: ...
@overload
def index_to_colour(index: torch.Tensor) -> torch.Tensor: ...


def index_to_colour(index: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Colour a class-index map with the palette.

    index: integer (H, W) (any leading dims work), values 0..6, numpy array or tensor on any device.
    Returns uint8 (..., 3) of the same kind (a tensor stays on its device). Values outside 0..6 are a
    programming error (ValueError): predictions and checked masks never hold them.
    """
    if isinstance(index, torch.Tensor):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= N_CLASSES):
            raise ValueError(f"class indices must be in 0..{N_CLASSES - 1}")
        palette = torch.from_numpy(PALETTE.copy()).to(index.device)
        return palette[index.long()]
    index = np.asarray(index)
    if index.size and (int(index.min()) < 0 or int(index.max()) >= N_CLASSES):
        raise ValueError(f"class indices must be in 0..{N_CLASSES - 1}")
    return PALETTE[index.astype(np.intp, copy=False)]
