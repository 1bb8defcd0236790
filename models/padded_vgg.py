"""VGG features on FCN8's 100-px zero padding, without computing what the padding makes constant.

FCN8 pads its input by 100 px (conv1_1 ``padding=100``), so a p x p patch is computed as a
(p + 198)-px map in every early layer. Wherever a layer's receptive field lies wholly in that padding
and away from the map's own edge, its input is one value per channel, so its output is one value per
channel too: the constant ``c_l`` of layer l (conv1_1: its bias; a conv: bias + the kernel's sum times
the constant; ReLU: relu of it; max-pool: the same). Only two parts of each map can differ from it:

- the *core*: the pixels whose receptive field reaches the image (a box, grown by each conv's halo
  and halved by each pool);
- the *ring*: a band along the map's edge, where a conv's own zero padding (``padding=1``) enters.

``PaddedVGG`` runs the layers on maps that are filled with the constant and then get the core and
the four ring strips computed by convolutions on crops (with their halos) of the full input map, so
every pixel gets the value the full convolution gives it. The cost of a conv is then that of the core
plus the thin ring instead of the whole map: at p = 508 the conv1 maps are 706 px wide and the core
512 px. Once the core and ring cover most of a map, the layer runs as usual. The logits are the same
up to float rounding (a convolution on a crop may sum in another order than on the whole map).

Only what VGG's feature stack holds is handled: 3x3 (or any odd, stride-1, same-padding)
convolutions, ReLU and max-pooling (any stride, ceil mode or not); anything else stops the tracking
and the remaining layers run as usual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# Above this share of a map that may differ from the constant, a layer runs on the whole map.
FULL_SHARE = 0.75

Box = tuple[int, int, int, int]  # top, bottom, left, right (half-open)


@dataclass(frozen=True)
class Extent:
    """Which pixels of a (height, width) map may differ from the map's constant: ``core`` and a band of
    ``ring`` pixels along the edge. ``None`` core: nothing is known (the whole map may differ)."""

    height: int
    width: int
    core: Box | None
    ring: int

    def boxes(self) -> list[Box]:
        """The core and the four ring strips, clipped to the map, empty ones dropped."""
        h, w, r = self.height, self.width, min(self.ring, self.height, self.width)
        boxes = [self.core] if self.core is not None else []
        if r > 0:
            boxes += [(0, r, 0, w), (h - r, h, 0, w), (r, h - r, 0, r), (r, h - r, w - r, w)]
        return [b for b in boxes if b[0] < b[1] and b[2] < b[3]]

    def share(self) -> float:
        """Share of the map covered by the boxes (overlaps counted twice: an upper bound)."""
        if self.core is None:
            return 1.0
        return sum((b[1] - b[0]) * (b[3] - b[2]) for b in self.boxes()) / (self.height * self.width)


def _clip(box: Box, height: int, width: int) -> Box:
    return max(0, box[0]), min(height, box[1]), max(0, box[2]), min(width, box[3])


def _same_padding_conv(layer: nn.Module) -> bool:
    if not isinstance(layer, nn.Conv2d):
        return False
    k, p = layer.kernel_size, layer.padding
    return (layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1 and isinstance(p, tuple)
            and k[0] % 2 == 1 and k[1] % 2 == 1 and p == (k[0] // 2, k[1] // 2) and layer.padding_mode == "zeros")


def _constant_conv(layer: nn.Conv2d, constant: torch.Tensor) -> torch.Tensor:
    """The conv's output on a map that is ``constant`` (C_in,) everywhere in its window: (C_out,)."""
    weight = layer.weight.sum(dim=(2, 3))
    out = torch.mv(weight, constant.to(weight.dtype))
    return out + layer.bias if layer.bias is not None else out


def _conv_boxes(layer: nn.Conv2d, x: torch.Tensor, constant: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """A same-padding conv of the full map ``x`` computed only on ``boxes``; the rest of the output is
    ``constant`` (C_out,), the conv's value on the input's constant."""
    batch, _, height, width = x.shape
    ph, pw = layer.padding
    parts = []
    for top, bottom, left, right in boxes:
        y0, y1, x0, x1 = _clip((top - ph, bottom + ph, left - pw, right + pw), height, width)
        crop = x[:, :, y0:y1, x0:x1]
        pads = (x0 - (left - pw), (right + pw) - x1, y0 - (top - ph), (bottom + ph) - y1)
        if any(pads):
            crop = F.pad(crop, pads)
        # A crop of a channels_last map is no longer channels_last-contiguous; without this the
        # convolution would take the slower NCHW path and reorder twice.
        parts.append(F.conv2d(crop.contiguous(memory_format=_format_of(x)), layer.weight, layer.bias))
    out = _filled(constant, batch, height, width, parts[0])
    for (top, bottom, left, right), part in zip(boxes, parts):
        out[:, :, top:bottom, left:right] = part
    return out


def _format_of(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _filled(constant: torch.Tensor, batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """A (batch, C, height, width) map holding ``constant`` (C,), in ``like``'s memory format."""
    out = torch.empty((batch, constant.numel(), height, width), dtype=like.dtype, device=like.device,
                      memory_format=_format_of(like))
    out.copy_(constant.to(like.dtype).view(1, -1, 1, 1).expand_as(out))
    return out


def _pool_extent(layer: nn.MaxPool2d, extent: Extent, height: int, width: int) -> Extent:
    """Where a max-pool's output may differ from the constant (a pool of a constant window is the
    constant, ceil-mode partial windows included)."""
    k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
    s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
    if extent.core is None:
        return Extent(height, width, None, 0)
    # Output row i pools input rows [s*i, s*i + k): it may differ when one of them may.
    top, bottom, left, right = extent.core
    core = _clip(((top - k + 1) // s, math.ceil(bottom / s), (left - k + 1) // s, math.ceil(right / s)), height, width)
    return Extent(height, width, core, math.ceil(extent.ring / s) + k)


class PaddedVGG:
    """Runs VGG layers from FCN8's padded first conv on, skipping the constant padding work (see the
    module doc). Stateless between calls: ``start`` begins a pass, ``run`` continues it over more layers."""

    @staticmethod
    def applies(first: nn.Module) -> bool:
        """Whether ``first`` is a same-kernel conv with the large zero padding this module is for."""
        if not isinstance(first, nn.Conv2d) or first.stride != (1, 1) or first.dilation != (1, 1):
            return False
        k, p = first.kernel_size, first.padding
        return (first.groups == 1 and first.padding_mode == "zeros" and isinstance(p, tuple)
                and p[0] >= k[0] and p[1] >= k[1])

    @staticmethod
    def start(first: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Extent]:
        """The padded first conv of ``x`` (B, C, H, W): (map, constant, extent). Only the part whose
        window reaches the image is convolved; the rest of the map is the bias."""
        (kh, kw), (ph, pw) = first.kernel_size, first.padding
        height, width = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
        constant = first.bias.detach().clone() if first.bias is not None else x.new_zeros(first.out_channels)
        top, left = ph - kh + 1, pw - kw + 1
        core = F.conv2d(x, first.weight, first.bias, padding=(kh - 1, kw - 1))
        out = _filled(constant, x.shape[0], height, width, core)
        out[:, :, top:top + core.shape[2], left:left + core.shape[3]] = core
        return out, constant, Extent(height, width, (top, top + core.shape[2], left, left + core.shape[3]), 0)

    @staticmethod
    def run(layers: nn.Sequential | list[nn.Module], x: torch.Tensor, constant: torch.Tensor | None,
            extent: Extent) -> tuple[torch.Tensor, torch.Tensor | None, Extent]:
        """Continue a pass over ``layers``; returns the new (map, constant, extent)."""
        for layer in layers:
            height, width = x.shape[2], x.shape[3]
            tracked = constant is not None and extent.core is not None
            if tracked and _same_padding_conv(layer) and extent.share() < FULL_SHARE:
                ph, pw = layer.padding
                top, bottom, left, right = extent.core
                grown = Extent(height, width, _clip((top - ph, bottom + ph, left - pw, right + pw), height, width),
                               extent.ring + max(ph, pw))
                constant = _constant_conv(layer, constant)
                x, extent = _conv_boxes(layer, x, constant, grown.boxes()), grown
            elif tracked and isinstance(layer, nn.ReLU):
                x = layer(x)
                constant = torch.relu(constant)
            elif tracked and isinstance(layer, nn.MaxPool2d) and layer.padding in (0, (0, 0)) \
                    and layer.dilation in (1, (1, 1)):
                x = layer(x)
                extent = _pool_extent(layer, extent, x.shape[2], x.shape[3])
            elif tracked and _same_padding_conv(layer):
                ph, pw = layer.padding
                x = layer(x)
                constant = _constant_conv(layer, constant)
                top, bottom, left, right = extent.core
                extent = Extent(height, width, _clip((top - ph, bottom + ph, left - pw, right + pw), height, width),
                                extent.ring + max(ph, pw))
            else:
                x = layer(x)
                constant, extent = None, Extent(x.shape[2], x.shape[3], None, 0)
        return x, constant, extent
