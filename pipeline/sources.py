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

Reading ahead. With ``readers`` > 0 (and a reader that can ``clone`` itself: one GDAL handle per
thread), ``prefetch(windows)`` starts reading, in a small pool of threads, the blocks under windows
the pipeline will ask for next (the predictor announces the next sub-batches' patches and context
windows); a strip pass reads each strip in pieces of one block (one block wide, cut at the block
rows) side by side, and the next strip meanwhile. Decoding, and over a network the round trips,
thus overlap each other and the computation. A block read ahead is held until it is asked for,
then enters the cache exactly as if it had been read then: the pixels, and so every output bit, are
the same with and without. At most ``capacity`` blocks (and one strip) are on their way at once, so
memory stays bounded by about twice the cache.

Both give the same pixels for the same image, so the pipeline's results do not depend on the source.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
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

    def prefetch(self, windows: Iterable[tuple[int, int, int, int]]) -> None:
        """A hint: these (top, left, height, width) windows are asked for next (a source may read ahead)."""
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

    def prefetch(self, windows: Iterable[tuple[int, int, int, int]]) -> None:
        """Nothing to read ahead: the image is in memory."""

    def close(self) -> None:
        """Nothing to release."""


Window = tuple[int, int, int, int]  # (top, left, height, width)


class WindowReader(Protocol):
    height: int
    width: int

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """uint8 (bands, height, width), zeros outside the image (3 bands unless it has ``channels``)."""
        ...


def _cancel(pieces: list[list[Future]]) -> None:
    """Cancel the reads of a strip's pieces that have not started."""
    for column in pieces:
        for future in column:
            future.cancel()


class WindowedSource:
    """Windows of a file, read in ``block`` x ``block`` squares kept in an LRU cache of ``capacity`` blocks.

    reader: anything with ``height``, ``width`` and a boundless ``read`` (``RasterScene``); with
    ``readers`` > 0 and a ``clone()`` method, blocks are also read ahead in that many threads
    (module doc); ``self.readers`` is how many threads read ahead (0: none). Windows are assembled on
    the CPU and moved to ``device`` once each. ``reads`` counts the blocks read so far (ahead or not).
    Call ``close`` (or use it as a context manager) to stop the reader threads.
    """

    def __init__(self, reader: WindowReader, device: torch.device | str = "cpu", block: int = 512,
                 capacity: int = 64, readers: int = 0) -> None:
        if block < 1 or capacity < 1 or readers < 0:
            raise ValueError(f"block ({block}) and capacity ({capacity}) must be positive, readers ({readers}) not "
                             f"negative")
        self.reader = reader
        self.height, self.width = int(reader.height), int(reader.width)
        self.channels = int(getattr(reader, "channels", 3))
        self.device = torch.device(device)
        self.block, self.capacity = block, capacity
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._pending: dict[tuple[int, int], Future] = {}
        self._strip_ahead: tuple[tuple[int, int, int], list[list[Future]]] | None = None
        self._pool = None
        if readers and hasattr(reader, "clone"):
            self._pool = ThreadPoolExecutor(readers, thread_name_prefix="fctl-read-ahead")
            self._local = threading.local()
            self._clones: list = []
            self._clones_lock = threading.Lock()
        self.readers = readers if self._pool is not None else 0
        self.reads = 0

    def __enter__(self) -> WindowedSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading ahead: pending reads are cancelled or awaited, the threads' file handles closed."""
        if self._pool is None:
            return
        for future in self._pending.values():
            future.cancel()
        if self._strip_ahead is not None:
            _cancel(self._strip_ahead[1])
        self._pool.shutdown(wait=True)
        self._pending.clear()
        self._strip_ahead = None
        for clone in self._clones:
            clone.close()
        self._clones.clear()
        self._pool = None

    def _read(self, by: int, bx: int) -> np.ndarray:
        b = self.block
        return self.reader.read(by * b, bx * b, b, b)

    def _read_ahead(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """In a reader thread, through that thread's own handle on the file."""
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = self.reader.clone()
            with self._clones_lock:
                self._clones.append(reader)
        return reader.read(top, left, height, width)

    def _keys(self, top: int, left: int, height: int, width: int) -> Iterable[tuple[int, int]]:
        """The blocks under a window, row by row."""
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, self.height), min(left + width, self.width)
        if y1 <= y0 or x1 <= x0:
            return
        b = self.block
        for by in range(y0 // b, (y1 - 1) // b + 1):
            for bx in range(x0 // b, (x1 - 1) // b + 1):
                yield by, bx

    def prefetch(self, windows: Iterable[Window]) -> None:
        """Start reading the blocks under ``windows`` (top, left, height, width) that are neither cached
        nor on their way, in order, while fewer than ``capacity`` are on their way."""
        if self._pool is None:
            return
        for window in windows:
            for key in self._keys(*window):
                if key in self._cache or key in self._pending:
                    continue
                if len(self._pending) >= self.capacity:
                    return
                b = self.block
                self._pending[key] = self._pool.submit(self._read_ahead, key[0] * b, key[1] * b, b, b)

    def _block(self, by: int, bx: int) -> torch.Tensor:
        key = (by, bx)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        ahead = self._pending.pop(key, None)
        data = torch.from_numpy(ahead.result() if ahead is not None else self._read(by, bx))
        self.reads += 1
        self._cache[key] = data
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return data

    def window(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        out = torch.zeros((self.channels, height, width), dtype=torch.uint8)
        b = self.block
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, self.height), min(left + width, self.width)
        for by, bx in self._keys(top, left, height, width):
            data = self._block(by, bx)
            r0, r1 = max(y0, by * b), min(y1, (by + 1) * b)
            c0, c1 = max(x0, bx * b), min(x1, (bx + 1) * b)
            out[:, r0 - top:r1 - top, c0 - left:c1 - left] = data[:, r0 - by * b:r1 - by * b, c0 - bx * b:c1 - bx * b]
        return out.to(self.device)

    def strip(self, top: int, bottom: int, width: int) -> torch.Tensor:
        """Read straight from the file: a strip pass reads each row once, so the cache would not help.
        With reader threads, the strip is read in pieces of one block, side by side in the threads, and
        the strip of the same height below is started meanwhile."""
        if self._pool is None:
            return torch.from_numpy(self.reader.read(top, 0, bottom - top, width)).to(self.device)
        ahead, self._strip_ahead = self._strip_ahead, None
        if ahead is not None and ahead[0] == (top, bottom, width):
            pieces = ahead[1]
        else:
            if ahead is not None:
                _cancel(ahead[1])
            pieces = self._strip_pieces(top, bottom, width)
        if bottom < self.height:
            below = (bottom, min(self.height, 2 * bottom - top), width)
            self._strip_ahead = (below, self._strip_pieces(*below))
        data = np.concatenate([np.concatenate([piece.result() for piece in column], axis=1) for column in pieces],
                              axis=2)
        return torch.from_numpy(data).to(self.device)

    def _strip_pieces(self, top: int, bottom: int, width: int) -> list[list[Future]]:
        """Reads of the strip's pieces, column by column: one block wide and cut at the block rows, so
        that each read lies in one tile of a tiled file. A tile that two strips share is then read the
        second time from the GDAL cache of downloaded bytes over a network (a read across two tiles goes
        through GDAL's multi-range path, which fetches them again)."""
        b = self.block
        cuts = [top, *range((top // b + 1) * b, bottom, b), bottom]
        return [[self._pool.submit(self._read_ahead, y0, left, y1 - y0, min(b, width - left))
                 for y0, y1 in zip(cuts, cuts[1:])] for left in range(0, width, b)]
