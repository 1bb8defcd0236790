"""Patches and their contexts, cut from an image tensor on its own device.

Three inputs feed the network for each patch at (top, left) of a float image (3, H, W) in [0, 1]:
- the patch itself, p x p (``crop_patches``);
- the medium context (``medium_contexts``): the c*p x c*p window centred on the patch, black where it
  leaves the image, shrunk to p x p;
- the large context (``global_view``): the whole image resized to size_g x size_g, one per image.

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

from utils.errors import ConfigError

CONTEXTS = (1, 2, 3, 4, 5)

Positions = torch.Tensor | Sequence[int]


def _as_image(image: torch.Tensor) -> torch.Tensor:
    """Accept (3, H, W) or (1, 3, H, W) and return the (3, H, W) view."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"expected an image (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
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
    """(window top, window left, window side) of the medium context of the patch at (top, left).

    The side is context*p; the window starts s = floor((context-1)*p/2) above and left of the patch
    (exactly centred unless (context-1)*p is odd, see the module doc).
    """
    _check_context(context)
    shift = (context - 1) * p // 2
    return top - shift, left - shift, context * p


def medium_contexts(
    image: torch.Tensor, tops: Positions, lefts: Positions, p: int, context: int
) -> torch.Tensor:
    """Medium contexts of the patches at (tops[i], lefts[i]): centred c*p windows shrunk to p x p.

    image: float (3, H, W) or (1, 3, H, W) in [0, 1], or uint8 in [0, 255] (each window is then
    converted on its own, so a large scene never exists as floats). Returns (N, 3, p, p) float on
    image's device. Parts of a window outside the image are black (0), as if the whole image had been
    padded.
    Windows are resized one at a time, so the extra memory is one window (3 x (c*p)^2 values)
    whatever N is; a window that lies fully inside the image is resized straight from the image
    without a copy. context 1 returns the patches themselves.
    """
    image = _as_image(image)
    _check_context(context)
    if not (image.is_floating_point() or image.dtype == torch.uint8):
        raise TypeError(f"medium_contexts needs a float or uint8 image, got {image.dtype}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    top_list, left_list = _positions(tops, lefts)
    channels = int(image.shape[0])
    out = torch.empty((len(top_list), channels, p, p), device=image.device,
                      dtype=image.dtype if image.is_floating_point() else torch.float32)
    for i, (top, left) in enumerate(zip(top_list, left_list)):
        y0, x0, side = context_window(top, left, p, context)
        y1, x1 = y0 + side, x0 + side
        iy0, ix0, iy1, ix1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
        if (iy0, ix0, iy1, ix1) == (y0, x0, y1, x1):
            window = image[:, y0:y1, x0:x1]
        else:
            window = image.new_zeros((channels, side, side))
            if iy1 > iy0 and ix1 > ix0:
                window[:, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = image[:, iy0:iy1, ix0:ix1]
        out[i] = _resize(_to_unit_float(window).unsqueeze(0), p)[0]
    return out


def _to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float images pass through unchanged."""
    return image if image.is_floating_point() else image.float().div_(255)


# Above this many values, a uint8 image is resized in strips instead of being converted to floats whole.
_STRIP_THRESHOLD = 1 << 26


def resize_weights(length: int, size: int, device: torch.device | str | None = None,
                   antialias: bool = True) -> torch.Tensor:
    """(length, size) matrix W with resize(v) = v @ W for any 1-D signal v of ``length`` values.

    Obtained by resizing unit vectors with the very same ``interpolate`` call (bilinear, which is
    linear and separable), a block of rows at a time, so resizing with these matrices strip by strip
    gives the direct resize's numbers without ever holding the large side whole.
    """
    out = torch.empty(length, size, device=device)
    block = 1024
    for start in range(0, length, block):
        stop = min(start + block, length)
        eye = torch.zeros(1, 1, stop - start, length, device=device)
        rows = torch.arange(stop - start, device=device)
        eye[0, 0, rows, rows + start] = 1.0
        out[start:stop] = F.interpolate(eye, size=(stop - start, size), mode="bilinear", antialias=antialias,
                                        align_corners=False)[0, 0]
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


def _resize_in_strips(image: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a large uint8 (C, H, W) image, about 64 MB of floats at a time.

    The resize is separable: each horizontal strip is resized along the width by ``interpolate`` itself
    (a scale of 1 along the height is the identity, so these are exactly the direct resize's horizontal
    weights, about 2W/size taps per output), and the vertical pass is accumulated over the strips with
    the vertical weight matrix: out = sum over strips of Wv[strip]^T . strip_resized. For a 20000 px
    side this measured about 15x faster than multiplying each strip by a dense (W, size) matrix.
    """
    channels, height, width = image.shape
    w_v = resize_weights(height, size, image.device)
    out = torch.zeros(channels, size, size, device=image.device)
    rows = max(1, (1 << 24) // (channels * width))
    for start in range(0, height, rows):
        strip = image[:, start:start + rows].float().div_(255)
        narrow = F.interpolate(strip.unsqueeze(0), size=(strip.shape[1], size), mode="bilinear",
                               antialias=True, align_corners=False)[0]
        out += torch.matmul(w_v[start:start + rows].T, narrow)
    return out.unsqueeze(0)


def global_view(image: torch.Tensor, size_g: int) -> torch.Tensor:
    """The large context: the whole image resized to size_g x size_g (PIL-style bilinear).

    image: float (3, H, W) or (1, 3, H, W) in [0, 1], or uint8 in [0, 255]. Returns float
    (1, 3, size_g, size_g) on its device; a float image already of that size comes back as a view of
    the input, not a copy. A large uint8 image is resized strip by strip (same numbers up to float
    rounding), so a 20000 px scene never exists as a 4.8 GB float copy.
    """
    if size_g <= 0:
        raise ConfigError(f"global size {size_g} must be positive; pass a larger `size_g`")
    image = _as_image(image)
    if not image.is_floating_point() and image.numel() > _STRIP_THRESHOLD:
        return _resize_in_strips(image, size_g)
    return _resize(_to_unit_float(image).unsqueeze(0), size_g)
