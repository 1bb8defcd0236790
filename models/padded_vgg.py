"""VGG features on FCN8's 100-px zero padding, without computing what the padding decides alone.

FCN8 pads its input by 100 px (conv1_1 ``padding=100``), so a p x p patch is computed as a
(p + 198)-px map in every early layer. Only the pixels whose receptive field reaches the image, the
*core* of each map (a box, grown by each conv's halo and halved by each pool), depend on the image.
Every other pixel holds what it holds for an all-zero image: the *background*.

- ``BackgroundPlan`` runs a pass on the cores alone. It takes the background of every layer, keeps
  the pieces around each core that a later pass reads (a conv's halo, a pool's partial windows, the
  map's edge) and the whole maps at the stops that ``FCN8`` returns. A pass convolves each core with
  its halo and pools it where it lies; whole maps are made only at the stops. ReLUs are folded into
  the next copy or applied after the next pool. At p = 508 the conv1 cores are 512 of 706 px wide.
- ``PaddedVGG`` computes the background cheaply: far from the map's edge it is one value per channel,
  the *constant* ``c_l`` of layer l (conv1_1: its bias; a conv: bias + the kernel's sum times the
  constant; ReLU: relu of it; max-pool: the same); near the edge lies a *ring* where a conv's own
  zero padding enters. Each map is filled with the constant and gets its rings convolved; once the
  rings cover most of a map, the layer runs on the whole map.

Both are differentiable: with autograd (training) the background carries the gradient of every
weight it depends on, and a plan is built for each pass on a batch of one. Without autograd
(inference, the frozen context encoders) a plan is kept while the weights stay the same
(``FCN8.padding_plan``). The features are the plain stack's up to float rounding (a convolution of a
crop may sum in another order than one of the whole map).

Only what VGG's feature stack holds is handled: 3x3 (or any odd, stride-1, same-padding)
convolutions, ReLU and max-pooling (any stride, ceil mode or not); anything else runs on the whole
map from there on.
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


def _grow(box: Box, ph: int, pw: int) -> Box:
    return box[0] - ph, box[1] + ph, box[2] - pw, box[3] + pw


def _grown(box: Box, ph: int, pw: int, height: int, width: int) -> Box:
    """A conv's core from its input's: ``box`` grown by the halo, clipped; an empty core stays empty."""
    if box[0] >= box[1] or box[2] >= box[3]:
        return box
    return _clip(_grow(box, ph, pw), height, width)


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
    """The background of VGG layers from FCN8's padded first conv on, by tracking its constant and
    computing only its rings (see the module doc). Stateless between calls: ``blank`` begins a pass,
    ``run`` continues it over more layers."""

    @staticmethod
    def applies(first: nn.Module) -> bool:
        """Whether ``first`` is a same-kernel conv with the large zero padding this module is for."""
        if not isinstance(first, nn.Conv2d) or first.stride != (1, 1) or first.dilation != (1, 1):
            return False
        k, p = first.kernel_size, first.padding
        return (first.groups == 1 and first.padding_mode == "zeros" and isinstance(p, tuple)
                and p[0] >= k[0] and p[1] >= k[1])

    @staticmethod
    def blank(first: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Extent]:
        """The padded first conv of an all-zero image shaped like ``x[:1]``: (map, constant, extent).
        The map is the bias everywhere (in the dtype the conv gives under the current autocast) and
        the core is empty, so ``run`` computes only the rings."""
        (kh, kw), (ph, pw) = first.kernel_size, first.padding
        height, width = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
        constant = first.bias if first.bias is not None else x.new_zeros(first.out_channels)
        dtype = F.conv2d(x[:1, :, :1, :1], first.weight[:, :, :1, :1]).dtype
        out = torch.empty((1, first.out_channels, height, width), dtype=dtype, device=x.device,
                          memory_format=_format_of(x))
        out.copy_(constant.to(dtype).view(1, -1, 1, 1).expand_as(out))
        return out, constant, Extent(height, width, (0, 0, 0, 0), 0)

    @staticmethod
    def run(layers: nn.Sequential | list[nn.Module], x: torch.Tensor, constant: torch.Tensor | None,
            extent: Extent) -> tuple[torch.Tensor, torch.Tensor | None, Extent]:
        """Continue a pass over ``layers``; returns the new (map, constant, extent)."""
        for layer in layers:
            height, width = x.shape[2], x.shape[3]
            tracked = constant is not None and extent.core is not None
            if tracked and _same_padding_conv(layer) and extent.share() < FULL_SHARE:
                ph, pw = layer.padding
                grown = Extent(height, width, _grown(extent.core, ph, pw, height, width), extent.ring + max(ph, pw))
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
                extent = Extent(height, width, _grown(extent.core, ph, pw, height, width), extent.ring + max(ph, pw))
            else:
                x = layer(x)
                constant, extent = None, Extent(x.shape[2], x.shape[3], None, 0)
        return x, constant, extent


# --- Without autograd: only the cores, on a background computed once --------------------------------

@dataclass(frozen=True)
class Core:
    """A batch of maps known only on ``box`` of a (height, width) map; everywhere else each map holds
    the plan's background. ``relu`` says that a ReLU is still to be applied to ``x`` (it is folded into
    the next copy or applied after the next max-pool, which it commutes with)."""

    x: torch.Tensor
    box: Box
    height: int
    width: int
    relu: bool = False

    def whole(self) -> bool:
        return self.box == (0, self.height, 0, self.width)

    def relued(self) -> torch.Tensor:
        return torch.relu(self.x) if self.relu else self.x


@dataclass(frozen=True)
class _Step:
    """One layer of a plan. ``kind`` is 'first' (the padded conv), 'conv', 'relu', 'pool' or 'map' (run
    on the whole map); ``read`` the box of the input map it reads (past the map's edge: the conv's zero
    padding); ``box`` and (``height``, ``width``) where its output may differ from the background;
    ``pieces`` the background of ``read`` outside the input's core, as (box relative to ``read``,
    (1, C, h, w))."""

    layer: nn.Module
    kind: str
    read: Box
    box: Box
    height: int
    width: int
    pieces: tuple[tuple[Box, torch.Tensor], ...] = ()


def _pieces(background: torch.Tensor, read: Box, inner: Box) -> tuple[tuple[Box, torch.Tensor], ...]:
    """The parts of ``background`` (1, C, H, W) in box ``read`` outside box ``inner`` (both in map
    coordinates, ``inner`` inside ``read``), zero where ``read`` passes the map's edge."""
    height, width = background.shape[2], background.shape[3]
    top, bottom, left, right = read
    pad = (max(0, -left), max(0, right - width), max(0, -top), max(0, bottom - height))
    window = background[:, :, max(0, top):min(height, bottom), max(0, left):min(width, right)]
    window = F.pad(window, pad) if any(pad) else window
    t, b, l, r = inner[0] - top, inner[1] - top, inner[2] - left, inner[3] - left
    h, w = bottom - top, right - left
    boxes = [(0, t, 0, w), (b, h, 0, w), (t, b, 0, l), (t, b, r, w)]
    return tuple(((y0, y1, x0, x1), window[:, :, y0:y1, x0:x1].clone())
                 for y0, y1, x0, x1 in boxes if y0 < y1 and x0 < x1)


def _paste(core: Core, read: Box, pieces) -> torch.Tensor:
    """The batch's maps on box ``read``: the core, with its pending ReLU, among the background pieces."""
    x = core.x
    out = torch.empty((x.shape[0], x.shape[1], read[1] - read[0], read[3] - read[2]), dtype=x.dtype,
                      device=x.device, memory_format=_format_of(x))
    for (y0, y1, x0, x1), piece in pieces:
        out[:, :, y0:y1, x0:x1] = piece
    top, bottom, left, right = core.box
    _put(core, out[:, :, top - read[0]:bottom - read[0], left - read[2]:right - read[2]])
    return out


def _put(core: Core, window: torch.Tensor) -> None:
    """Write the core's maps, with their pending ReLU, into ``window`` (a view of the same shape)."""
    if core.relu and torch.is_grad_enabled():
        window.copy_(torch.relu(core.x))
    elif core.relu:  # one pass instead of two
        torch.clamp_min(core.x, 0, out=window)
    else:
        window.copy_(core.x)


def _pool_geometry(layer: nn.MaxPool2d, box: Box, height: int, width: int, out_h: int, out_w: int) -> tuple[Box, Box]:
    """(read, box) of a max-pool with (``out_h``, ``out_w``) outputs: ``box`` holds the outputs whose
    window meets the input's core ``box``, ``read`` the input rows and columns those windows cover."""
    k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
    s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
    # Output i pools input [s*i, s*i + k): it meets [lo, hi) when s*i + k > lo and s*i < hi.
    rows = max(0, (box[0] - k) // s + 1), min(out_h, -(-box[1] // s))
    cols = max(0, (box[2] - k) // s + 1), min(out_w, -(-box[3] // s))
    read = (rows[0] * s, min(height, (rows[1] - 1) * s + k), cols[0] * s, min(width, (cols[1] - 1) * s + k))
    return read, (*rows, *cols)


def _pool_aligned(layer: nn.Module) -> int | None:
    """The stride of a max-pool whose windows tile the map (kernel == stride), else None."""
    if not (isinstance(layer, nn.MaxPool2d) and layer.padding in (0, (0, 0)) and layer.dilation in (1, (1, 1))):
        return None
    k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
    s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
    square = layer.kernel_size in (k, (k, k)) and layer.stride in (s, (s, s))
    return s if square and k == s else None


class BackgroundPlan:
    """A pass of FCN8's padded VGG layers on the cores alone, for inputs shaped like ``x`` past the
    batch (see the module doc). ``stops`` are the layer indices whose whole maps ``full`` gives.

    The background comes from ``PaddedVGG`` on a zero image of batch one, under the caller's grad
    and autocast state. Built with autograd, the plan carries the weights' gradient and serves that
    one pass; built without, it serves any number of passes while ``key_of`` stays the same.
    """

    def __init__(self, layers: nn.Sequential, x: torch.Tensor, stops: tuple[int, ...]) -> None:
        # Built with autograd, the background carries the weights' gradient; such a plan is for one pass.
        self.differentiable = torch.is_grad_enabled()
        self.steps: list[_Step] = []
        # Per stop, the whole background map as the one piece ``_paste`` lays under the core.
        self.backgrounds: dict[int, tuple[tuple[Box, torch.Tensor], ...]] = {}
        first = layers[0]
        (kh, kw), (ph, pw) = first.kernel_size, first.padding
        background, constant, extent = PaddedVGG.blank(first, x)
        box = (ph - kh + 1, ph - kh + 1 + x.shape[2] + kh - 1, pw - kw + 1, pw - kw + 1 + x.shape[3] + kw - 1)
        self.steps.append(_Step(first, "first", (0, x.shape[2], 0, x.shape[3]), box, *background.shape[2:]))
        for index in range(1, len(layers)):
            out, constant, extent = PaddedVGG.run(layers[index:index + 1], background, constant, extent)
            step = self._step(layers, index, box, background, out)
            self.steps.append(step)
            background, box = out, step.box
            if index + 1 in stops:  # a copy: the next layer may be an in-place ReLU
                whole_map = (0, background.shape[2], 0, background.shape[3])
                self.backgrounds[index + 1] = ((whole_map, background.clone()),)

    @staticmethod
    def key_of(layers: nn.Sequential, x: torch.Tensor) -> tuple:
        """What a plan depends on: the input's shape past the batch, dtype, device and memory format,
        the autocast state, and the identity and version of every weight."""
        device = x.device.type
        autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)) \
            if device in ("cpu", "cuda") else None
        # Inference tensors keep no version counter: weights created under inference_mode count as unchanged.
        weights = tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in layers.parameters())
        return tuple(x.shape[1:]), x.dtype, x.device, _format_of(x), autocast, weights

    @staticmethod
    def same_weights(key: tuple, other: tuple) -> bool:
        """Whether two ``key_of`` keys are of the same weights (at the same versions)."""
        return key[-1] == other[-1]

    def _step(self, layers, index: int, box: Box, background: torch.Tensor, out: torch.Tensor) -> _Step:
        """How layer ``index`` runs on a core ``box`` of ``background``'s map; ``out`` is its background."""
        layer = layers[index]
        (height, width), (out_h, out_w) = background.shape[2:], out.shape[2:]
        whole = box == (0, height, 0, width)
        if isinstance(layer, nn.ReLU):
            return _Step(layer, "relu", box, box, height, width)
        if _same_padding_conv(layer) and not whole:
            ph, pw = layer.padding
            grown = _grown(box, ph, pw, height, width)
            stride = self._next_pool_stride(layers, index)
            if stride is not None:  # so that the pool reads the core as it is
                grown = _clip((grown[0] // stride * stride, -(-grown[1] // stride) * stride,
                               grown[2] // stride * stride, -(-grown[3] // stride) * stride), height, width)
            read = _grow(grown, ph, pw)
            return _Step(layer, "conv", read, grown, height, width, _pieces(background, read, box))
        if _pool_aligned(layer) is not None and not whole:
            read, pooled = _pool_geometry(layer, box, height, width, out_h, out_w)
            return _Step(layer, "pool", read, pooled, out_h, out_w, () if read == box else _pieces(background, read, box))
        full = (0, height, 0, width)
        return _Step(layer, "map", full, (0, out_h, 0, out_w), out_h, out_w, () if whole else _pieces(background, full, box))

    @staticmethod
    def _next_pool_stride(layers, index: int) -> int | None:
        for layer in list(layers)[index + 1:]:
            if not isinstance(layer, nn.ReLU):
                return _pool_aligned(layer)
        return None

    def start(self, x: torch.Tensor) -> Core:
        """The first (padded) conv of ``x`` (B, C, H, W), on its core only."""
        if torch.is_grad_enabled() and not self.differentiable:
            raise RuntimeError("this BackgroundPlan was built without autograd, so its background has no "
                               "gradient: build a new plan for a pass with autograd")
        step = self.steps[0]
        first = step.layer
        core = F.conv2d(x, first.weight, first.bias, padding=(first.kernel_size[0] - 1, first.kernel_size[1] - 1))
        return Core(core, step.box, step.height, step.width)

    def run(self, core: Core, start: int, stop: int) -> Core:
        """Layers ``start`` (>= 1) to ``stop`` (exclusive) on ``core``."""
        for step in self.steps[start:stop]:
            core = self._apply(step, core)
        return core

    def _apply(self, step: _Step, core: Core) -> Core:
        if step.kind == "relu":
            return Core(core.x, core.box, core.height, core.width, relu=True)
        if step.kind == "conv":
            layer = step.layer
            x = _paste(core, step.read, step.pieces)
            return Core(F.conv2d(x, layer.weight, layer.bias), step.box, step.height, step.width)
        if step.kind == "pool":
            x = core.x if not step.pieces else _paste(core, step.read, step.pieces)
            out = step.layer(x)
            relu = core.relu and not step.pieces
            return Core(torch.relu(out) if relu else out, step.box, step.height, step.width)
        x = core.relued() if core.whole() else _paste(core, step.read, step.pieces)
        return Core(step.layer(x), step.box, step.height, step.width)

    def full(self, core: Core, stop: int) -> torch.Tensor:
        """The whole maps (B, C, height, width) of a core that ends at ``stop``, one of the plan's stops."""
        if core.whole():
            return core.relued()
        return _paste(core, (0, core.height, 0, core.width), self.backgrounds[stop])
