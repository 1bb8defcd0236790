"""Image sources: where the pipeline takes its pixels from.

The pipeline never indexes an image directly: it asks a source for windows (a patch, a patch's
medium-context window, a strip of rows for the global view), each as uint8 (3, h, w) on the
pipeline's device, zeros where the window leaves the image. Two sources exist:

- ``TensorSource``: an image already in memory (the DeepGlobe splits, JPEG/PNG inputs). A window that
  lies inside the image is a view of it, so nothing is copied;
- ``WindowedSource``: a reader of windows of a file (``dataset.scenes.RasterScene``), behind a small
  cache of square blocks. The pipeline runs patch rows top to bottom and, within a row, left to right,
  so the blocks under the current row's windows are what is reused: the cache holds about one row's
  height of them across a few patches' width (``capacity`` blocks), whatever the scene's size. A block
  is read again when a later row needs it after it was evicted (about (context x p) / stride times,
  3.5 for p = 508 and context 3).

Both give the same pixels for the same image, so the pipeline's results do not depend on the source.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np
import torch


class ImageSource(Protocol):
    """What the pipeline needs from an image: its size, its number of bands (``channels``: 3 for RGB,
    more for a network of more bands, see ``models.bands``) and boundless uint8 windows on ``device``."""

    height: int
    width: int
    channels: int
    device: torch.device

    def window(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """uint8 (channels, height, width) at (top, left), zeros outside the image."""
        ...

    def strip(self, top: int, bottom: int, width: int) -> torch.Tensor:
        """uint8 (channels, bottom - top, width): rows from column 0, for passes over the whole image."""
        ...


class TensorSource:
    """An in-memory uint8 (bands, H, W) image on its device."""

    def __init__(self, image: torch.Tensor) -> None:
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3:
            raise ValueError(f"expected an image (bands, H, W) or (1, bands, H, W), got shape {tuple(image.shape)}")
        self.image = image
        self.channels = int(image.shape[0])
        self.height, self.width = int(image.shape[-2]), int(image.shape[-1])
        self.device = image.device

    def window(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """A view of the image when the window lies inside it; otherwise a zero-filled copy."""
        y1, x1 = top + height, left + width
        iy0, ix0, iy1, ix1 = max(top, 0), max(left, 0), min(y1, self.height), min(x1, self.width)
        if (iy0, ix0, iy1, ix1) == (top, left, y1, x1):
            return self.image[:, top:y1, left:x1]
        out = self.image.new_zeros((self.image.shape[0], height, width))
        if iy1 > iy0 and ix1 > ix0:
            out[:, iy0 - top:iy1 - top, ix0 - left:ix1 - left] = self.image[:, iy0:iy1, ix0:ix1]
        return out

    def strip(self, top: int, bottom: int, width: int) -> torch.Tensor:
        return self.window(top, 0, bottom - top, width)


class WindowReader(Protocol):
    height: int
    width: int

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """uint8 (bands, height, width), zeros outside the image (3 bands unless it has ``channels``)."""
        ...


class WindowedSource:
    """Windows of a file, read in ``block`` x ``block`` squares kept in an LRU cache of ``capacity`` blocks.

    reader: anything with ``height``, ``width`` and a boundless ``read`` (``RasterScene``). Windows are
    assembled on the CPU and moved to ``device`` once each. ``reads`` counts the blocks read so far.
    """

    def __init__(self, reader: WindowReader, device: torch.device | str = "cpu", block: int = 512,
                 capacity: int = 64) -> None:
        if block < 1 or capacity < 1:
            raise ValueError(f"block ({block}) and capacity ({capacity}) must be positive")
        self.reader = reader
        self.height, self.width = int(reader.height), int(reader.width)
        self.channels = int(getattr(reader, "channels", 3))
        self.device = torch.device(device)
        self.block, self.capacity = block, capacity
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.reads = 0

    def _block(self, by: int, bx: int) -> torch.Tensor:
        key = (by, bx)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        b = self.block
        data = torch.from_numpy(self.reader.read(by * b, bx * b, b, b))
        self.reads += 1
        self._cache[key] = data
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return data

    def window(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        out = torch.zeros((self.channels, height, width), dtype=torch.uint8)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, self.height), min(left + width, self.width)
        b = self.block
        for by in range(y0 // b, (y1 - 1) // b + 1) if y1 > y0 else ():
            for bx in range(x0 // b, (x1 - 1) // b + 1) if x1 > x0 else ():
                data = self._block(by, bx)
                r0, r1 = max(y0, by * b), min(y1, (by + 1) * b)
                c0, c1 = max(x0, bx * b), min(x1, (bx + 1) * b)
                out[:, r0 - top:r1 - top, c0 - left:c1 - left] = data[:, r0 - by * b:r1 - by * b, c0 - bx * b:c1 - bx * b]
        return out.to(self.device)

    def strip(self, top: int, bottom: int, width: int) -> torch.Tensor:
        """Read straight from the file: a strip pass reads each row once, so the cache would not help."""
        return torch.from_numpy(self.reader.read(top, 0, bottom - top, width)).to(self.device)
