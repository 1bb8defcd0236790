"""The 8 test-time views: no flip / horizontal flip, times rotation by 0, 90, 180, 270 degrees.

A view is a pair (flip, k). ``to_view`` flips the last dim (horizontal flip) if asked, then rotates
by k quarter turns with ``torch.rot90(x, k, dims=(-2, -1))`` (counter-clockwise as displayed, like
PIL's ``rotate``). ``from_view`` undoes both exactly. For odd k an H x W image becomes W x H: each
view's canvas has the view's own size and is mapped back whole, so nothing is cropped on non-square
images (the released code rotates inside one fixed canvas and crops them).
"""

from __future__ import annotations

import torch

View = tuple[bool, int]

VIEWS: tuple[View, ...] = tuple((flip, k) for flip in (False, True) for k in range(4))


def _check(view: View) -> tuple[bool, int]:
    flip, k = view
    if k not in (0, 1, 2, 3):
        raise ValueError(f"a view's rotation must be 0..3 quarter turns, got {k}")
    return bool(flip), int(k)


def to_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """x (..., H, W) seen in ``view``: flipped left-right if view[0], then rotated by view[1]
    quarter turns. Shape (..., H, W) for even k, (..., W, H) for odd k."""
    flip, k = _check(view)
    if flip:
        x = torch.flip(x, dims=(-1,))
    if k:
        x = torch.rot90(x, k, dims=(-2, -1))
    return x


def from_view(y: torch.Tensor, view: View) -> torch.Tensor:
    """Inverse of ``to_view``: maps y (..., h, w) computed in ``view`` back to the original
    orientation, so ``from_view(to_view(x, v), v)`` equals x exactly."""
    flip, k = _check(view)
    if k:
        y = torch.rot90(y, -k, dims=(-2, -1))
    if flip:
        y = torch.flip(y, dims=(-1,))
    return y
