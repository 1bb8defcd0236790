"""The overlapping patch grid that tiles an image for the local branch.

The rule reproduces the released FCtL code exactly, because a released checkpoint was trained and
evaluated on these very patch positions: along one axis of length L with patch size p,

    n = 1; while L > n*p: n += 1            # enough patches to cover L
    while p - (L-p)/(n-1) < 50: n += 1      # neighbours overlap by at least 50 px
    step = (L-p)/(n-1); starts = [round(x*step) for x in 0..n-2] + [L-p]

``round`` is Python's round (ties to even), as in the original. For L = 2448 and p = 508 this gives
6 starts 0, 388, 776, 1164, 1552, 1940 (stride 388), so 6 x 6 = 36 patches.

The original divides by zero when L <= p; here such an axis has the single start 0 and the pipeline
zero-pads the image to p first (``pad_to_min``) and crops the result back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.errors import ConfigError

MIN_OVERLAP = 50


def patch_starts(length: int, p: int) -> list[int]:
    """Start offsets of the patches along one axis of ``length`` pixels (spec rule, see module doc).

    Returns ``[0]`` when ``length <= p``. Raises ConfigError when ``p <= 50`` and ``length > p``,
    because then no number of patches can overlap by 50 px and the original rule never ends.
    """
    if p <= 0:
        raise ConfigError(f"patch size {p} must be positive; pass a larger `size_p`")
    if length <= 0:
        raise ConfigError(f"image side {length} must be positive; check the input image")
    if length <= p:
        return [0]
    if p <= MIN_OVERLAP:
        raise ConfigError(
            f"patch size {p} cannot overlap its neighbours by {MIN_OVERLAP} px; "
            f"pass a `size_p` larger than {MIN_OVERLAP}"
        )
    n = 1
    while length > n * p:
        n += 1
    while p - (length - p) / (n - 1) < MIN_OVERLAP:
        n += 1
    step = (length - p) / (n - 1)
    return [round(x * step) for x in range(n - 1)] + [length - p]


@dataclass
class PatchGrid:
    """Patch positions of one image: every (top, left) pair of ``tops`` x ``lefts``, row-major.

    ``height`` and ``width`` are the sides the grid was made for (after any padding to ``size``).
    """

    height: int
    width: int
    size: int
    tops: list[int]
    lefts: list[int]

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)

    def boxes(self) -> list[tuple[int, int]]:
        """All (top, left) patch corners, row by row, left to right (the original's order)."""
        return [(top, left) for top in self.tops for left in self.lefts]

    def rows(self) -> list[tuple[int, list[int]]]:
        """One entry per grid row, top to bottom: (row top, lefts of the patches in that row)."""
        return [(top, list(self.lefts)) for top in self.tops]

    def seam_band(self, k: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the patches' overlaps start and end: (rows bool (height,), columns bool (width,)), True
        within ``k`` px of a line where a patch starts or ends strictly inside the grid's sides (the
        image border is no seam). A line between pixels e - 1 and e marks pixels e - k .. e + k - 1;
        pixel (y, x) lies in the seam band when rows[y] or columns[x]."""
        return _near_edges(self.tops, self.size, self.height, k, device), \
            _near_edges(self.lefts, self.size, self.width, k, device)


def _near_edges(starts: list[int], size: int, length: int, k: int, device) -> torch.Tensor:
    """bool (length,): True within ``k`` px of a patch edge (a start or start + size) inside (0, length)."""
    near = torch.zeros(length, dtype=torch.bool, device=device)
    for edge in {e for s in starts for e in (s, s + size)}:
        if 0 < edge < length:
            near[max(0, edge - k):edge + k] = True
    return near


def make_grid(height: int, width: int, size: int) -> PatchGrid:
    """Grid of ``size`` x ``size`` patches for an image of ``height`` x ``width``.

    A side shorter than ``size`` gets the single start 0; the caller pads such images with
    ``pad_to_min`` so that every patch lies inside the image.
    """
    return PatchGrid(height, width, size, patch_starts(height, size), patch_starts(width, size))


def pad_to_min(image: torch.Tensor, p: int, value: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two dims (bottom and right) with ``value`` (zeros) so that both are at least ``p``.

    image: (..., H, W), any dtype. Returns (padded (..., max(H,p), max(W,p)), (H, W)); the original
    size lets the caller crop its result back. The input is returned as is when no padding is needed.
    """
    if p <= 0:
        raise ConfigError(f"patch size {p} must be positive; pass a larger `size_p`")
    if image.dim() < 2:
        raise ValueError(f"pad_to_min expects (..., H, W), got shape {tuple(image.shape)}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    pad_h, pad_w = max(0, p - height), max(0, p - width)
    if pad_h == 0 and pad_w == 0:
        return image, (height, width)
    return F.pad(image, (0, pad_w, 0, pad_h), value=value), (height, width)
