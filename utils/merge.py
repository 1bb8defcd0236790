"""Summing patch logits into a full-size canvas.

Test-time prediction adds the raw logits of every patch into a canvas of the image's size; where
patches overlap their logits add up (no softmax, no averaging), as the released code does. The argmax
of the canvas is the prediction, so only the sums matter and the order of the additions does not
(apart from float rounding).

``add_patches`` fills a whole canvas (C x H x W float32: about 168 MB for a 2448 px image with 7
classes). ``RollingCanvas`` takes patches sorted by row and hands back horizontal bands of the canvas
as soon as no pending patch can add to them, so its memory does not grow with the image height.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


class RollingCanvas:
    """A canvas that holds only the rows still being written, for images too tall to hold whole.

    Patches may arrive in any order as long as no patch starts above the rows already released.
    ``release(upto)`` declares that no later patch will touch rows above ``upto`` and returns those
    rows as a band ``(y0, logits (C, h, W))``; bands come out in order and cover each row once.

    Feeding the patches sorted by their top and releasing up to the next pending top keeps about
    (p + step) rows alive: for W = 20000, p = 508, step = 388 and 7 classes about 0.5 GB, against
    11 GB for a whole 20000 x 20000 canvas.
    """

    def __init__(self, n_class: int, height: int, width: int, device: torch.device | str | None = None) -> None:
        self.n_class, self.height, self.width = n_class, height, width
        self.y0 = 0  # first row not yet released
        self._buffer = torch.zeros((n_class, 0, width), dtype=torch.float32, device=device)

    def add(self, logits: torch.Tensor, tops: Positions, lefts: Positions) -> None:
        """Add patches logits[i] (C, p, p) at (tops[i], lefts[i]) of the full canvas."""
        top_list = _as_list(tops)
        if not top_list:
            return
        if min(top_list) < self.y0:
            raise ValueError(f"a patch at top {min(top_list)} arrived after rows up to {self.y0} were released")
        bottom = max(top_list) + int(logits.shape[-1])
        if bottom > self.height:
            raise ValueError(f"a patch reaches row {bottom} of a {self.height}-row canvas")
        held = self._buffer.shape[1]
        if self.y0 + held < bottom:
            extra = torch.zeros((self.n_class, bottom - self.y0 - held, self.width), dtype=torch.float32,
                                device=self._buffer.device)
            self._buffer = torch.cat([self._buffer, extra], dim=1)
        add_patches(self._buffer, logits, [t - self.y0 for t in top_list], lefts)

    def release(self, upto: int) -> tuple[int, torch.Tensor] | None:
        """Hand out rows [y0, upto) as (y0, band (C, h, W)); None when there is nothing new."""
        upto = min(upto, self.height)
        if upto <= self.y0:
            return None
        rows = upto - self.y0
        held = self._buffer.shape[1]
        if rows <= held:
            band, self._buffer = self._buffer[:, :rows], self._buffer[:, rows:].clone()
        else:  # rows no patch touched are zero
            band = torch.cat([self._buffer, self._buffer.new_zeros((self.n_class, rows - held, self.width))], dim=1)
            self._buffer = self._buffer[:, :0]
        start, self.y0 = self.y0, upto
        return start, band
