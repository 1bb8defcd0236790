"""Training augmentation, applied to the image and its label on their device.

As in the released training: a horizontal flip with probability 0.5, then with probability 0.5 a
rotation by 90, 180 or 270 degrees (counter-clockwise, chosen uniformly). The random numbers come
from a CPU ``torch.Generator`` that the caller owns and can save, so a resumed run draws the same
augmentations. Every call draws the same amount from the generator (three numbers) whatever the
outcome, which keeps the stream aligned. Rotating a non-square pair by 90 or 270 degrees swaps its
height and width (nothing is cropped).
"""

from __future__ import annotations

import torch

from utils.dihedral import to_view


def random_flip_rotate(
    image: torch.Tensor, label: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip/rotate image (3, H, W) and label (H, W) identically. Returns (image, label)."""
    if image.shape[-2:] != label.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in size")
    coins = torch.rand(2, generator=generator).tolist()
    quarter_turns = int(torch.randint(1, 4, (1,), generator=generator))
    view = (coins[0] < 0.5, quarter_turns if coins[1] < 0.5 else 0)
    return to_view(image, view), to_view(label, view)
