"""What a network reads per pixel: its input bands and how each is normalised.

Every network reads ``InputBands.count`` bands scaled to [0, 1] (uint8 / 255): R, G, B first (or the
three bands chosen as such), then any further bands (e.g. near-infrared) in the order the data set
gives them. ``RGB`` (three bands) is what both releases and every model before this option read; a
model of three bands records nothing new in its checkpoint, so those files stay as they were.

Normalisation. Backbones that normalise their input (the FPN-ResNets: ImageNet weights expect it)
subtract ``mean`` and divide by ``std`` band by band: ImageNet's values for the first three bands, the
data set's own statistics for the others (``tools.prepare_scenes`` measures them on the training
tiles; ``EXTRA_MEAN`` / ``EXTRA_STD`` otherwise). FCN8 does not normalise (as released), whatever the
bands.

First convolution (``widen_first_conv``). A backbone of N > 3 bands starts from its 3-band
convolution (ImageNet's, or a random one): the kernels of the first three bands are kept, and each
further band gets the mean of the three RGB kernels of the same filter, so a further band starts out
seen as a grey version of the image would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTRA_MEAN, EXTRA_STD = 0.5, 0.25  # a further band without measured statistics
MAX_BANDS = 32


@dataclass(frozen=True)
class InputBands:
    """``count`` bands in [0, 1] and their normalisation ``mean`` / ``std`` (``count`` values each)."""

    count: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 3 <= self.count <= MAX_BANDS:
            raise ValueError(f"a network reads 3 to {MAX_BANDS} bands, got {self.count}")
        if len(self.mean) != self.count or len(self.std) != self.count or min(self.std) <= 0:
            raise ValueError(f"{self.count} bands need {self.count} means and {self.count} positive deviations")

    @staticmethod
    def of(count: int, extra_mean: Sequence[float] | None = None, extra_std: Sequence[float] | None = None) -> InputBands:
        """``count`` bands: ImageNet's statistics for the first three, the given (or default) ones after."""
        extra = count - 3
        mean = tuple(extra_mean) if extra_mean is not None else (EXTRA_MEAN,) * extra
        std = tuple(extra_std) if extra_std is not None else (EXTRA_STD,) * extra
        return InputBands(count, IMAGENET_MEAN + tuple(float(v) for v in mean),
                          IMAGENET_STD + tuple(float(v) for v in std))

    @property
    def is_rgb(self) -> bool:
        return self == RGB

    def record(self) -> dict[str, Any]:
        """The JSON-able form that checkpoints record."""
        return {"count": self.count, "mean": list(self.mean), "std": list(self.std)}

    @staticmethod
    def from_record(raw: Any) -> InputBands:
        """The bands a checkpoint records (``record``); ``RGB`` for None (files without the record)."""
        if raw is None:
            return RGB
        return InputBands(int(raw["count"]), tuple(float(v) for v in raw["mean"]), tuple(float(v) for v in raw["std"]))

    def describe(self) -> str:
        return "3 bands (RGB)" if self.count == 3 else f"{self.count} bands (RGB + {self.count - 3})"

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std band by band; x (B, count, H, W)."""
        mean = x.new_tensor(self.mean).view(1, self.count, 1, 1)
        std = x.new_tensor(self.std).view(1, self.count, 1, 1)
        return (x - mean) / std


RGB = InputBands()


def widen_first_conv(conv: nn.Conv2d, count: int) -> nn.Conv2d:
    """A copy of the 3-band ``conv`` for ``count`` bands (the rule in the module doc); ``conv`` itself
    when ``count`` is 3. Works on a meta-device conv too (then only the shape changes)."""
    if count == 3:
        return conv
    if conv.in_channels != 3:
        raise ValueError(f"expected a 3-band convolution, got {conv.in_channels} input channels")
    wider = nn.Conv2d(count, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                      padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        grey = conv.weight.mean(dim=1, keepdim=True)
        wider.weight.copy_(torch.cat([conv.weight, grey.expand(-1, count - 3, -1, -1)], dim=1))
        if conv.bias is not None:
            wider.bias.copy_(conv.bias)
    return wider
