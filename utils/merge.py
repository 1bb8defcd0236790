"""Summing patch logits into a full-size canvas.

Test-time prediction adds the raw logits of every patch into a canvas of the image's size; where
patches overlap their logits add up (no softmax, no averaging), as the released code does. The argmax
of the canvas is the prediction, so only the sums matter and the order of the additions does not
(apart from float rounding).

``add_patches`` fills a whole canvas (C x H x W float32: about 168 MB for a 2448 px image with 7
classes). For images whose canvas does not fit, ``BandMerger`` takes the patches one grid row at a
time and hands back horizontal bands of the canvas as soon as no later row can add to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utils.grid import patch_starts

Positions = torch.Tensor | Sequence[int]


def _as_list(values: Positions) -> list[int]:
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.reshape(-1).tolist()]
    return [int(v) for v in values]


def add_patches(canvas: torch.Tensor, logits: torch.Tensor, tops: Positions, lefts: Positions) -> None:
    """Add logits[i] into canvas at (tops[i], lefts[i]), in place.

    canvas: float32 (C, H, W). logits: (N, C, p, p), any float dtype (half logits are added in
    float32). Every patch must lie inside the canvas.
    """
    if canvas.dtype != torch.float32:
        raise TypeError(f"the canvas must be float32, got {canvas.dtype}")
    if logits.dim() != 4 or logits.shape[1] != canvas.shape[0] or logits.shape[2] != logits.shape[3]:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not fit a canvas of shape {tuple(canvas.shape)}"
        )
    top_list, left_list = _as_list(tops), _as_list(lefts)
    if len(top_list) != logits.shape[0] or len(left_list) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} patches but {len(top_list)} tops and {len(left_list)} lefts")
    p = int(logits.shape[-1])
    height, width = int(canvas.shape[-2]), int(canvas.shape[-1])
    for i, (top, left) in enumerate(zip(top_list, left_list)):
        if top < 0 or left < 0 or top + p > height or left + p > width:
            raise ValueError(f"patch at ({top}, {left}) of size {p} leaves the {height}x{width} canvas")
        canvas[:, top : top + p, left : left + p].add_(logits[i])


class BandMerger:
    """Streaming canvas for tall images: patches come in one grid row at a time, bands go out.

    The grid rows are those of ``utils.grid.patch_starts(height, p)``, so the merger knows which
    canvas rows a later grid row can still touch. After grid row i (top t_i) has been added, canvas
    rows below t_{i+1} are final and are returned as a band ``(y0, logits (C, h, W))``; bands come out
    in order and together cover rows 0..height-1 exactly once.

    Memory: the merger holds one p-row buffer (C x p x W float32) and returns each band as a copy of
    at most step = t_{i+1} - t_i rows, so about (p + step) x W x C floats are alive per image while
    the caller consumes each band before adding the next row (plus one transient copy of p - step rows
    while the buffer shifts). For W = 20000, p = 508, step = 388 and 7 classes that is about 0.5 GB,
    against 11 GB for a whole 20000 x 20000 canvas.
    """

    def __init__(self, n_class: int, height: int, width: int, p: int, device: torch.device | str | None = None):
        if height < p or width < p:
            raise ValueError(f"a {height}x{width} canvas is smaller than the patch size {p}; pad the image first")
        self.n_class = n_class
        self.height = height
        self.width = width
        self.p = p
        self.tops = patch_starts(height, p)
        self._next_row = 0
        self._buffer = torch.zeros((n_class, p, width), dtype=torch.float32, device=device)

    @property
    def done(self) -> bool:
        """True once every grid row has been added (and so every band returned)."""
        return self._next_row == len(self.tops)

    def add_row(
        self, top: int, lefts: Positions, logits: torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        """Add all patches of the next grid row; return the bands this row finished (0 or 1).

        top: the row's top, which must be the next one of ``self.tops``. lefts: the patches' lefts, in
        any order. logits: (N, C, p, p) matching lefts. Returns a list of (y0, band (C, h, W) float32).
        """
        if self.done:
            raise ValueError(f"all {len(self.tops)} grid rows were already added")
        expected = self.tops[self._next_row]
        if int(top) != expected:
            raise ValueError(f"expected grid row {self._next_row} at top {expected}, got top {top}")
        left_list = _as_list(lefts)
        add_patches(self._buffer, logits, [0] * len(left_list), left_list)
        self._next_row += 1
        end = self.tops[self._next_row] if not self.done else self.height
        finished = end - expected
        if finished == 0:
            return []
        band = self._buffer[:, :finished].clone()
        if finished < self.p:
            self._buffer[:, : self.p - finished] = self._buffer[:, finished:].clone()
        self._buffer[:, self.p - finished :] = 0
        return [(expected, band)]

    def finish(self) -> list[tuple[int, torch.Tensor]]:
        """Check that every grid row came in and return the bands still held (none: ``add_row``
        returns the last band with the last row)."""
        if not self.done:
            raise ValueError(f"only {self._next_row} of {len(self.tops)} grid rows were added")
        return []
