"""Patches and their contexts, cut from an image tensor on its own device.

What the network reads for each patch at (top, left) of a float image (3, H, W) in [0, 1] is cut here
(``pipeline.inputs`` decides which of these a mode reads):
- the patch itself, p x p (``crop_patches``);
- a context window (``context_windows``): the c*p x c*p window centred on the patch, black where it
  leaves the image, shrunk to p x p: the medium window (c = ``context``) and mode 5's large window
  (c = ``context2``);
- the global view (``global_view``): the whole image resized to size_g x size_g, one per image, which
  the frozen global encoder turns into the global context.

The released code builds the medium window by padding the WHOLE image with black by s = (c-1)*p/2 and
cropping. The result is the same when each window is built on its own (zeros, then the part of the
window that lies inside the image is copied in), which is what happens here, so a 20000 px image is
never copied into an even larger padded one. The original pads by p/4 for c = 4, so its window is not
centred (a defect); here every window is centred. When (c-1)*p is odd the window cannot be centred
exactly: it then starts s = floor((c-1)*p/2) pixels above and left of the patch and the extra pixel
lies below and to the right.

Resizing uses ``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``,
the same triangle filter, widened by the scale factor when shrinking, that PIL's ``Image.BILINEAR``
applies. PIL works on uint8 and rounds after each of its two passes; this float pipeline does not
round, so results differ from PIL by about 1/255 at most.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pipeline.sources import ImageSource, TensorSource
from utils.errors import ConfigError

CONTEXTS = (1, 2, 3, 4, 5)

Positions = torch.Tensor | Sequence[int]


def _as_image(image: torch.Tensor) -> torch.Tensor:
    """Accept (bands, H, W) or (1, bands, H, W) and return the (bands, H, W) view."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"expected an image (bands, H, W) or (1, bands, H, W), got shape {tuple(image.shape)}")
    return image


def as_list(values: Positions) -> list[int]:
    """Patch positions as Python ints (one transfer for a device tensor, not one per element)."""
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.reshape(-1).tolist()]
    return [int(v) for v in values]


def _positions(tops: Positions, lefts: Positions) -> tuple[list[int], list[int]]:
    top_list, left_list = as_list(tops), as_list(lefts)
    if len(top_list) != len(left_list):
        raise ValueError(f"{len(top_list)} tops but {len(left_list)} lefts")
    return top_list, left_list


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, h, w) float -> (B, 3, size, size) with PIL-style antialiased bilinear filtering."""
    if not images.is_floating_point():
        raise TypeError(f"resizing needs a float image, got {images.dtype}")
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def crop_patches(image: torch.Tensor, tops: Positions, lefts: Positions, p: int) -> torch.Tensor:
    """Cut the p x p patches with corners (tops[i], lefts[i]) out of ``image``.

    image: (3, H, W) or (1, 3, H, W), any dtype, any device. Returns (N, 3, p, p) of the same dtype.
    Every patch must lie inside the image (pad first with ``pipeline.grid.pad_to_min``). Slicing and
    stacking is used because on the CPU it is about twice as fast as one advanced-indexing gather.
    """
    image = _as_image(image)
    height, width = int(image.shape[-2]), int(image.shape[-1])
    top_list, left_list = _positions(tops, lefts)
    if not top_list:
        return image.new_empty((0, image.shape[0], p, p))
    for top, left in zip(top_list, left_list):
        if top < 0 or left < 0 or top + p > height or left + p > width:
            raise ValueError(f"patch at ({top}, {left}) of size {p} leaves the {height}x{width} image")
    return torch.stack([image[:, top : top + p, left : left + p] for top, left in zip(top_list, left_list)])


def _check_context(context: int) -> None:
    if context not in CONTEXTS:
        raise ConfigError(
            f"context {context} is not supported; pass `context` as one of "
            f"{', '.join(str(c) for c in CONTEXTS)}"
        )


def context_window(top: int, left: int, p: int, context: int) -> tuple[int, int, int]:
    """(window top, window left, window side) of the context window of the patch at (top, left).

    The side is context*p; the window starts s = floor((context-1)*p/2) above and left of the patch
    (exactly centred unless (context-1)*p is odd, see the module doc).
    """
    _check_context(context)
    shift = (context - 1) * p // 2
    return top - shift, left - shift, context * p


def context_windows(
    image: torch.Tensor | ImageSource, tops: Positions, lefts: Positions, p: int, context: int
) -> torch.Tensor:
    """Context windows of the patches at (tops[i], lefts[i]): centred c*p windows shrunk to p x p.

    image: a source (``pipeline.sources``) or a tensor: float (3, H, W) or (1, 3, H, W) in [0, 1], or
    uint8 in [0, 255] (each window is then converted on its own, so a large scene never exists as
    floats). Returns (N, 3, p, p) float on the image's device. Parts of a window outside the image are
    black (0), as if the whole image had been padded.
    Windows are resized one at a time, so the extra memory is one window (3 x (c*p)^2 values)
    whatever N is; a window that lies fully inside an in-memory image is resized straight from the
    image without a copy. context 1 returns the patches themselves.
    """
    source = image if not isinstance(image, torch.Tensor) else TensorSource(_as_image(image))
    _check_context(context)
    dtype = source.image.dtype if isinstance(source, TensorSource) else torch.uint8
    if not (dtype.is_floating_point or dtype == torch.uint8):
        raise TypeError(f"context_windows needs a float or uint8 image, got {dtype}")
    top_list, left_list = _positions(tops, lefts)
    out = torch.empty((len(top_list), source.channels, p, p), device=source.device,
                      dtype=dtype if dtype.is_floating_point else torch.float32)
    for i, (top, left) in enumerate(zip(top_list, left_list)):
        y0, x0, side = context_window(top, left, p, context)
        out[i] = _resize(_to_unit_float(source.window(y0, x0, side, side)).unsqueeze(0), p)[0]
    return out


def _to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float images pass through unchanged."""
    return image if image.is_floating_point() else image.float().div_(255)


# Above this many values (32 M: a 3340 px square, not a 2448 px DeepGlobe image), a uint8 image is
# resized in strips instead of being converted to floats whole: the whole float copy would then be
# larger than a strip pass needs (a 64 MB strip, its weights and the uint8 strip).
_STRIP_THRESHOLD = 1 << 25


def resize_weights(length: int, size: int, device: torch.device | str | None = None,
                   antialias: bool = True, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """(stop - start, size) rows of the matrix W with resize(v) = v @ W for any 1-D signal v of
    ``length`` values (all ``length`` rows by default).

    Obtained by resizing unit vectors with the very same ``interpolate`` call (bilinear, which is
    linear and separable), a block of rows at a time, so resizing with these matrices strip by strip
    gives the direct resize's numbers without ever holding the large side whole. Each row is computed
    on its own, so a row has the same value whichever range it was asked for with.
    """
    stop = length if stop is None else stop
    out = torch.empty(stop - start, size, device=device)
    block = 1024
    for first in range(start, stop, block):
        last = min(first + block, stop)
        eye = torch.zeros(1, 1, last - first, length, device=device)
        rows = torch.arange(last - first, device=device)
        eye[0, 0, rows, rows + first] = 1.0
        out[first - start:last - start] = F.interpolate(eye, size=(last - first, size), mode="bilinear",
                                                        antialias=antialias, align_corners=False)[0, 0]
    return out


def linear_taps(length: int, size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two taps of plain (not antialiased) bilinear resizing from ``length`` to ``size`` samples.

    Returns (index (2, size) int64, weight (2, size) float32) with resize(v)[i] = sum_k weight[k, i] *
    v[index[k, i]]: the two largest entries of each column of ``resize_weights(..., antialias=False)``
    (a column with one tap gets a second of weight 0). Resizing with them costs 2 multiply-adds per
    output value instead of ``length`` for the dense matrix.
    """
    weights, index = resize_weights(length, size, device, antialias=False).topk(min(2, length), dim=0)
    if length == 1:
        weights, index = torch.cat([weights, torch.zeros_like(weights)]), torch.cat([index, index])
    return index, weights


def strip_rows(channels: int, width: int) -> int:
    """Rows per strip of a strip pass: about 64 MB of float32 (16 M values) whatever the width."""
    return max(1, (1 << 24) // (channels * width))


def resize_in_strips(read_rows, channels: int, height: int, width: int, size: tuple[int, int],
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Antialiased bilinear resize of a large uint8 (C, H, W) image to (1, C, *size) float, one strip
    of ``strip_rows`` rows at a time; ``read_rows(top, bottom)`` gives the uint8 (C, rows, W) strip.

    The resize is separable: each horizontal strip is resized along the width by ``interpolate`` itself
    (a scale of 1 along the height is the identity, so these are exactly the direct resize's horizontal
    weights, about 2W/size taps per output), and the vertical pass is accumulated over the strips with
    the strip's rows of the vertical weight matrix: out = sum over strips of Wv[strip]^T . strip_resized.
    Only one strip and its rows of Wv exist at a time, so memory does not depend on the image's size;
    the numbers depend only on the image and the width (through the strip height), not on where the
    strips come from. For a 20000 px side this measured about 15x faster than multiplying each strip by
    a dense (W, size) matrix.
    """
    out_h, out_w = size
    out = torch.zeros(channels, out_h, out_w, device=device)
    rows = strip_rows(channels, width)
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        strip = read_rows(start, stop).float().div_(255)
        narrow = F.interpolate(strip.unsqueeze(0), size=(strip.shape[1], out_w), mode="bilinear",
                               antialias=True, align_corners=False)[0]
        out += torch.matmul(resize_weights(height, out_h, device, start=start, stop=stop).T, narrow)
    return out.unsqueeze(0)


def global_view(image: torch.Tensor | ImageSource, size_g: int, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """The large context: the whole image resized to size_g x size_g (PIL-style bilinear).

    image: a float (3, H, W) or (1, 3, H, W) tensor in [0, 1], a uint8 one in [0, 255], or a source.
    Returns float (1, 3, size_g, size_g) on its device; a float image already of that size comes back
    as a view of the input, not a copy. A large uint8 image (more than 32 M values) is resized strip by
    strip (same numbers up to float rounding), so a 20000 px scene never exists as a 4.8 GB float copy;
    a source of that size is read strip by strip, and a smaller one is read whole and resized as a
    tensor, so a source and the tensor of the same image give the same numbers. ``shape`` (sources
    only) is the (height, width) to resize, zeros below and right of the source: the padded image.
    """
    if size_g <= 0:
        raise ConfigError(f"global size {size_g} must be positive; pass a larger `size_g`")
    if isinstance(image, TensorSource):
        image = image.image
    if not isinstance(image, torch.Tensor):
        height, width = shape or (image.height, image.width)
        if image.channels * height * width > _STRIP_THRESHOLD:
            source = image
            return resize_in_strips(lambda top, bottom: source.strip(top, bottom, width), source.channels, height,
                                    width, (size_g, size_g), source.device)
        image = image.window(0, 0, height, width)
    image = _as_image(image)
    if not image.is_floating_point() and image.numel() > _STRIP_THRESHOLD:
        channels, height, width = image.shape
        return resize_in_strips(lambda top, bottom: image[:, top:bottom], channels, height, width, (size_g, size_g),
                                image.device)
    return _resize(_to_unit_float(image).unsqueeze(0), size_g)
