"""Summing patch logits into a canvas and turning it into class maps.

Test-time prediction adds the raw logits of every patch into a canvas of the image's size; where
patches overlap their logits add up (no softmax, no averaging), as the released code does. The argmax
of the canvas is the prediction, so only the sums matter and the order of the additions does not
(apart from float rounding).

The ``hann`` merge rule (``PipelineConfig.merge``) multiplies each patch's logits by a window that falls
to 0 towards the patch's edges (``HannWindows``) before they are added; the weights are summed too (from
the patches' boxes, when their rows are final), and the weighted mean is the sums divided by them. A
positive scale per pixel leaves the argmax alone, so class maps need only the weighted sums.

Two ways to hold the canvas:
- ``add_patches`` fills a whole canvas (C x H x W float32: about 168 MB for a 2448 px image with 7
  classes, 11 GB for 20000 x 20000); the tests use it as the reference.
- ``BandMerger`` (what ``pipeline.predictor.Predictor`` uses) rolls along the rows and the columns: the rows that
  become final after a row of patches live in column tiles that are finalised, left to right, as soon as
  the row's patches have passed them, so only the rows shared with the NEXT row of patches (the grid's
  overlap, about 50 px) are held across the whole width. For a 20000 px wide image, p = 508 and 7 classes
  that is about 35 MB of float32 instead of 285 MB (one patch height) or 11 GB (whole canvas).

Every merge is float32, whatever dtype the network's logits had (autocast): half logits are added
into a float32 canvas.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import torch

from pipeline.contexts import Positions, as_list
from utils.errors import ResourceError, reason
from utils.memory import give_back_heap

_TINY = torch.finfo(torch.float32).tiny
SCORE_ROWS = 64  # rows of a tile turned into scores at a time (BandMerger._score)


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
    top_list, left_list = as_list(tops), as_list(lefts)
    if len(top_list) != logits.shape[0] or len(left_list) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} patches but {len(top_list)} tops and {len(left_list)} lefts")
    p = int(logits.shape[-1])
    height, width = int(canvas.shape[-2]), int(canvas.shape[-1])
    for i, (top, left) in enumerate(zip(top_list, left_list)):
        if top < 0 or left < 0 or top + p > height or left + p > width:
            raise ValueError(f"patch at ({top}, {left}) of size {p} leaves the {height}x{width} canvas")
        canvas[:, top : top + p, left : left + p].add_(logits[i])


def argmax_classes(logits: torch.Tensor) -> torch.Tensor:
    """Class map (..., h, w) uint8 of logits (C, ..., h, w): the index of the largest value along dim 0.

    Equal to ``logits.argmax(0)`` (the first index wins a tie) for finite values. torch's argmax over
    the leading dimension of a contiguous (C, h, w) tensor is several times slower on the CPU than C-1
    elementwise passes and needs an int64 result, so a channel-first tensor takes the passes; a
    channel-innermost one (dim 0 has stride 1, e.g. a permuted channels_last canvas) takes torch's
    argmax over its contiguous last dimension.
    """
    if logits.shape[0] > 256:
        raise ValueError(f"at most 256 classes fit a uint8 class map, got {logits.shape[0]}")
    if logits.dim() > 1 and logits.stride(0) == 1 and logits.shape[0] > 1:
        return logits.movedim(0, -1).argmax(-1).to(torch.uint8)
    best = logits[0].float().clone()
    index = torch.zeros(logits.shape[1:], dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[0]):
        channel = logits[c].float()
        index.masked_fill_(channel > best, c)
        torch.maximum(best, channel, out=best)
    return index


class HannWindows:
    """The weights of the ``hann`` merge: one (p, p) float32 window per patch, by where it lies on the canvas.

    Along each axis the weight is the Hann window w(i) = sin^2(pi * i / (p - 1)), i = 0..p-1: largest
    (about 1) at the centre, exactly 0 at both edges, so a patch's contribution fades to nothing where
    it ends and the merged logits have no seam there. An edge that lies on the canvas border is not
    tapered: the weight stays 1 from the patch centre to it. There no neighbour takes over, and a
    tapered edge would leave the border pixels with weight 0. The window is the outer product of the
    row and the column weights.

    With this rule every pixel's summed weight is positive. A view's grid is every pair of its row and
    column starts, so its summed weight is the product of a sum along the rows and one along the
    columns; along an axis, a pixel on a tapered edge of one patch lies strictly inside the neighbour
    that overlaps it (grid neighbours overlap by at least 50 px), and an axis no longer than a patch has
    one start with both edges on the border (a canvas no larger than a patch gets a window of ones).

    The 1-D profiles are made once (in float64, rounded to float32, the same bits on every device);
    each of the (at most 16) 2-D windows is made on first use and kept.
    """

    def __init__(self, size: int, device: torch.device | str | None = None) -> None:
        self.size = size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        i = torch.arange(size, dtype=torch.float64)
        # From the nearer edge, so that the window is exactly symmetric and exactly 0 at both edges.
        hann = torch.sin(math.pi * torch.minimum(i, size - 1 - i) / max(size - 1, 1)) ** 2
        centre = (size - 1) / 2
        one = torch.ones_like(hann)
        # Indexed by the edges on the border: 0 none, 1 the first, 2 the last, 3 both.
        self._profiles = torch.stack([hann, torch.where(i <= centre, one, hann), torch.where(i >= centre, one, hann),
                                      one]).float().to(self.device)
        self._windows: dict[tuple[int, int], torch.Tensor] = {}

    def _edges(self, start: int, length: int) -> int:
        return int(start == 0) + 2 * int(start + self.size == length)

    def __call__(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """Weights (p, p) float32, on ``device``, of the patch at (top, left) of a height x width canvas."""
        key = (self._edges(top, height), self._edges(left, width))
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = self._profiles[key[0], :, None] * self._profiles[key[1], None, :]
        return window


OUTPUTS = ("mask", "logits", "mean", "confidence", "probabilities")
WEIGHTED = ("mean", "confidence", "probabilities")  # the outputs that divide by the summed patch weights


class SpillFile:
    """CPU tiles parked in an unlinked temporary file (page cache, not the process's memory).

    Each key keeps one slot, reused while its tile fits and moved to the end of the file when it
    grows, so the file stays about as large as what is parked. Values come back bit for bit. A file
    that cannot be made or written (a full or read-only temporary folder) is a ``ResourceError``.
    """

    def __init__(self, folder: str | None = None) -> None:
        self._folder = folder or tempfile.gettempdir()
        try:
            self._file = tempfile.TemporaryFile(dir=folder)
        except OSError as exc:
            raise self._error(exc) from exc
        self._fd = self._file.fileno()
        self._end = 0
        self._slots: dict[int, tuple[int, int]] = {}  # key -> (offset, capacity in bytes)

    def put(self, key: int, values: torch.Tensor) -> None:
        """Store a contiguous CPU tensor under ``key`` (its bytes: any dtype)."""
        if not values.is_contiguous():
            raise ValueError("only contiguous tensors can be spilled")
        data = values.numpy().reshape(-1).view(np.uint8)
        offset, capacity = self._slots.get(key, (self._end, 0))
        if data.nbytes > capacity:
            offset, capacity = self._end, data.nbytes
            self._end += data.nbytes
        self._slots[key] = (offset, capacity)
        try:
            written = os.pwrite(self._fd, data, offset)
            while written < data.nbytes:  # pwrite may write less than asked
                written += os.pwrite(self._fd, data[written:], offset + written)
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> ResourceError:
        return ResourceError(f"cannot park the merger's tiles in a temporary file in {self._folder} ({reason(exc)}); "
                             f"free space there or set TMPDIR to a folder with room")

    def get(self, key: int, out: torch.Tensor) -> None:
        """Fill the contiguous CPU tensor ``out`` (the dtype and size ``put`` had) with what it stored under ``key``."""
        if not out.is_contiguous():
            raise ValueError("only contiguous tensors can be filled from the spill file")
        data = out.numpy().reshape(-1).view(np.uint8)
        offset = self._slots[key][0]
        done = 0
        while done < data.nbytes:
            done += os.preadv(self._fd, [data[done:]], offset + done)

    def close(self) -> None:
        self._file.close()


def top_probability(sums: torch.Tensor, counts: torch.Tensor | float) -> torch.Tensor:
    """uint8 round(255 x the largest softmax probability) of the mean logits ``sums / counts``.

    sums: (C, ...) float; counts: how many logits were summed at each pixel (a number, or (...)), or,
    for weighted sums, the sum of the weights. The mean, not the sum, is what a single network output
    would be: overlaps and TTA views add logits up, which would make the softmax sharper where more
    patches overlap.
    """
    scale = 1.0 / counts if not isinstance(counts, torch.Tensor) else counts.float().reciprocal()
    best = sums.max(dim=0).values
    total = torch.zeros_like(best)
    for c in range(sums.shape[0]):
        total += torch.exp((sums[c] - best) * scale)
    return total.reciprocal_().mul_(255).round_().to(torch.uint8)


def class_probabilities(sums: torch.Tensor, counts: torch.Tensor | float) -> torch.Tensor:
    """uint8 (C, ...) round(255 x the softmax probability of each class) of the mean logits ``sums /
    counts`` (see ``top_probability``, whose value is the largest of these at every pixel)."""
    scale = 1.0 / counts if not isinstance(counts, torch.Tensor) else counts.float().reciprocal()
    best = sums.max(dim=0).values
    each = torch.exp((sums - best) * scale)
    total = torch.zeros_like(best)
    for c in range(sums.shape[0]):
        total += each[c]
    return each.div_(total).mul_(255).round_().to(torch.uint8)


def class_output(sums: torch.Tensor, counts: torch.Tensor | float, output: str) -> torch.Tensor:
    """What the class outputs hand out for merged logit sums (C, h, w) (``counts``: see
    ``top_probability``): ``mask`` uint8 (h, w) the class map; ``confidence`` uint8 (2, h, w) the class
    map and the top-1 probability x 255; ``probabilities`` uint8 (1 + C, h, w) the class map and every
    class's probability x 255."""
    classes = argmax_classes(sums)
    if output == "mask":
        return classes
    if output == "confidence":
        return torch.stack([classes, top_probability(sums, counts)])
    if output == "probabilities":
        return torch.cat([classes[None], class_probabilities(sums, counts)])
    raise ValueError(f"{output!r} is no class output")


class BandMerger:
    """Sums patch logits and hands out finished horizontal bands, holding only what is still open.

    The patches come in *rows*. ``begin_row(end, bottom)`` opens a row and promises that after its
    patches no later patch touches the rows above ``end``; ``add(logits, top, left)`` adds one patch of
    the row (tops at or below the first unreleased row ``y0``, lefts in non-decreasing order);
    ``end_row()`` returns ``(y0, band)`` with the final rows [y0, end) and moves ``y0`` to ``end``.
    A band is a uint8 class map (h, W) (``output="mask"``), the float32 summed logits (C, h, W)
    (``output="logits"``), the float32 mean logits (C, h, W) (``output="mean"``) or, for
    ``output="confidence"``, uint8 (2, h, W): the class map and ``top_probability``. For the ``WEIGHTED``
    outputs the merger also keeps the box of every patch whose rows are not all final, with its weight:
    1 per patch, whose sum counts the logits summed at each pixel, or the ``HannWindows`` weights the
    logits were multiplied by. When rows become final their summed weights are made from those boxes,
    added in the order the patches came (the same float32 sums a channel of weights beside the logits
    would hold, without its memory), and the mean is the sums divided by them.

    Memory. The canvas is kept as column tiles of ``tile`` columns. A tile the current row has not yet
    reached holds only the rows carried over from earlier rows; when the row's first patch reaches it,
    it is widened to the row's ``bottom``; once the row's patches have passed it (a patch's left is at
    or beyond the tile's right edge), its rows above ``end`` are final: they go into the band (argmax
    for masks) and the tile shrinks to the rows below ``end``. So at any time: the carried rows
    (``bottom - end`` of the previous row, the grid's vertical overlap when rows are whole grid rows)
    across the whole width, a few tiles of the row's full height under the current patches, and the
    band being filled (uint8 for masks). Nothing depends on the image height.

    With ``spill`` (CPU only) the tiles waiting for the next row, the rows carried across the whole
    width, are parked in a ``SpillFile`` between rows, so what stays in memory does not grow with the
    width either: for a 32768 px wide canvas with 7 classes that is about 50 MB. The score channels of
    the ``confidence`` and ``probabilities`` bands wait there too, tile by tile as they are finalised,
    and join the class map only when ``end_row`` hands the band out: while the row's patches are
    computed the band in memory is the class map alone (h x W bytes), as for ``mask``.

    The sums are made in the order the patches are added, so the result equals ``add_patches`` over
    the same patches in the same order bit for bit, and the class maps equal its ``argmax_classes``.
    The tiles take the memory layout of the first patch: channel-innermost when the network returns
    channels_last logits (adding them into a channel-first tile measured 5x slower on the CPU).
    """

    def __init__(self, n_class: int, height: int, width: int, device: torch.device | str | None = None,
                 output: str = "mask", tile: int = 512, spill: bool = False) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if tile < 1:
            raise ValueError(f"tile width must be positive, got {tile}")
        self.n_class, self.height, self.width = n_class, height, width
        self.weighted = output in WEIGHTED
        self._boxes: list[tuple[int, int, int, torch.Tensor | None]] = []  # (top, left, p, weight) of each patch
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.output, self.tile = output, tile
        self.y0 = 0  # first row not yet handed out
        self._channels_last: bool | None = None  # tile layout, fixed by the first patch
        starts = range(0, width, tile)
        self._cols = [(x0, min(x0 + tile, width)) for x0 in starts]
        # Tile j holds rows [y0, y0 + rows) (or, once finalised in the current row, [end, ...)).
        self._tiles = [self._zeros(0, x1 - x0) for x0, x1 in self._cols]
        self._end: int | None = None  # end of the open row
        self._bottom = 0
        self._next = 0  # first tile of the open row not yet finalised
        self._last_left = 0
        self._band: torch.Tensor | None = None
        if spill and self.device.type != "cpu":
            raise ValueError(f"only CPU tiles can be spilled to a file, not tiles on {self.device}")
        self._spill = SpillFile() if spill else None
        self._parked: dict[int, tuple[int, int]] = {}  # tile index -> (rows, columns) of a parked tile
        self._park_scores = spill and output in ("confidence", "probabilities")
        self._scored: dict[int, int] = {}  # tile index -> rows of its score channels parked in this row

    def _park(self, j: int, tile: torch.Tensor) -> None:
        """Keep tile j (its rows carried to the next row) in the spill file, or in memory without one."""
        if self._spill is None or tile.shape[1] == 0:
            self._tiles[j] = tile
            return
        self._spill.put(j, tile.permute(1, 2, 0) if self._channels_last else tile)
        self._parked[j] = (tile.shape[1], tile.shape[2])
        self._tiles[j] = self._zeros(0, tile.shape[2])

    def _tile(self, j: int) -> torch.Tensor:
        """Tile j, brought back from the spill file if it was parked there."""
        if j in self._parked:
            rows, cols = self._parked.pop(j)
            tile = self._zeros(rows, cols)
            self._spill.get(j, tile.permute(1, 2, 0) if self._channels_last else tile)
            self._tiles[j] = tile
        return self._tiles[j]

    def close(self) -> None:
        """Remove the spill file (also done when the merger is garbage collected)."""
        if self._spill is not None:
            self._spill.close()

    def _zeros(self, rows: int, cols: int) -> torch.Tensor:
        if self._channels_last:
            return torch.zeros((rows, cols, self.n_class), dtype=torch.float32, device=self.device).permute(2, 0, 1)
        return torch.zeros((self.n_class, rows, cols), dtype=torch.float32, device=self.device)

    @property
    def held_values(self) -> int:
        """Float values held in the tiles now (for tests and memory accounting)."""
        return sum(t.numel() for t in self._tiles)

    @property
    def band_bytes(self) -> int:
        """Bytes of the band being filled in the open row (for tests and memory accounting)."""
        return 0 if self._band is None else self._band.numel() * self._band.element_size()

    def begin_row(self, end: int, bottom: int) -> None:
        """Open a row whose patches reach at most row ``bottom``; rows above ``end`` are final after it."""
        if self._end is not None:
            raise RuntimeError("begin_row() called twice; close the row with end_row() first")
        if not self.y0 < end <= self.height:
            raise ValueError(f"row end {end} must lie in ({self.y0}, {self.height}]")
        if bottom > self.height:
            raise ValueError(f"a row reaching row {bottom} does not fit a {self.height}-row canvas")
        self._end, self._bottom = end, max(bottom, end)
        self._next, self._last_left = 0, 0
        rows = end - self.y0
        if self.output in ("logits", "mean"):
            shape = (self.n_class, rows, self.width)
        elif self.output == "mask" or self._park_scores:  # parked score channels join it in end_row
            shape = (rows, self.width)
        else:
            shape = (self._channels(), rows, self.width)
        self._band = torch.zeros(shape, dtype=torch.float32 if self.output in ("logits", "mean") else torch.uint8,
                                 device=self.device)

    def _channels(self) -> int:
        """Channels of a uint8 band with scores: the class map and the top-1 or every class's probability."""
        return 2 if self.output == "confidence" else 1 + self.n_class

    def add(self, logits: torch.Tensor, top: int, left: int, weight: torch.Tensor | None = None) -> None:
        """Add one patch (C, p, p) at (top, left) of the full canvas into the open row.

        For the weighted outputs the patch's weight is kept with its box: ``weight`` (p, p) float32 (the
        window ``logits`` were multiplied by, kept by reference), or 1 everywhere when None. The other
        outputs take no weight."""
        if self._end is None:
            raise RuntimeError("add() outside a row; call begin_row() first")
        if logits.dim() != 3 or logits.shape[0] != self.n_class or logits.shape[1] != logits.shape[2]:
            raise ValueError(f"a patch must be ({self.n_class}, p, p), got {tuple(logits.shape)}")
        p = int(logits.shape[-1])
        if weight is not None and (not self.weighted or weight.shape != (p, p)):
            raise ValueError(f"a weight of shape {tuple(weight.shape)} for a ({p}, {p}) patch of the "
                             f"{self.output!r} output" + ("" if self.weighted else ", which sums no weights"))
        top, left = int(top), int(left)
        if top < self.y0:
            raise ValueError(f"a patch at top {top} arrived after rows up to {self.y0} were released")
        if top + p > self._bottom or left < 0 or left + p > self.width:
            raise ValueError(f"patch at ({top}, {left}) of size {p} leaves the open row (rows up to "
                             f"{self._bottom}, {self.width} columns)")
        if left < self._last_left:
            raise ValueError(f"patches of a row must come left to right: {left} after {self._last_left}")
        self._last_left = left
        if self._channels_last is None:
            self._channels_last = logits.stride(0) == 1 and self.n_class > 1
            if self._channels_last:
                self._tiles = [self._relayout(t) for t in self._tiles]
        # Tiles wholly left of this patch are final for this row: no later patch of it reaches them.
        while self._next < len(self._cols) and self._cols[self._next][1] <= left:
            self._finalise(self._next)
            self._next += 1
        first = left // self.tile
        last = (left + p - 1) // self.tile
        for j in range(first, last + 1):
            x0, x1 = self._cols[j]
            tile = self._tile(j)
            need = self._bottom - self.y0
            if tile.shape[1] < need:  # widen to the row's full height once
                grown = self._zeros(need, x1 - x0)
                grown[:, : tile.shape[1]] = tile
                self._tiles[j] = tile = grown
            c0, c1 = max(left, x0), min(left + p, x1)
            r0 = top - self.y0
            tile[:, r0 : r0 + p, c0 - x0 : c1 - x0].add_(logits[:, :, c0 - left : c1 - left])
        if self.weighted:
            self._boxes.append((top, left, p, weight))

    def _relayout(self, tile: torch.Tensor) -> torch.Tensor:
        out = self._zeros(tile.shape[1], tile.shape[2])
        out.copy_(tile)
        return out

    def _finalise(self, j: int) -> None:
        """Move tile j's rows above the row end into the band and keep only the rows below it."""
        x0, x1 = self._cols[j]
        tile = self._tile(j)
        rows = self._end - self.y0
        done = min(rows, tile.shape[1])
        if done:
            head = tile[:, :done]
            # A pixel of the tile that no weight reached (below the shorter patches of a row; in layouts
            # that are no grid, on a tapered edge) has sums and weights 0: the weights are raised to the
            # smallest normal float, so its mean is 0, not NaN. Rows below every patch stay 0 in the band.
            if self.output == "mask":
                self._band[:done, x0:x1] = argmax_classes(head)
            elif self.output in ("confidence", "probabilities"):
                self._score(j, head)
            elif self.output == "mean":
                self._band[:, :done, x0:x1] = head / self._weights(0, done, x0, x1).clamp_(min=_TINY)
            else:
                self._band[:, :done, x0:x1] = head
        # A clone, not a view: the head's memory is given back.
        self._park(j, tile[:, rows:].clone() if tile.shape[1] > rows else self._zeros(0, x1 - x0))

    def _score(self, j: int, head: torch.Tensor) -> None:
        """The class map and scores of tile j's final rows ``head`` (C, rows, w) into the band (the
        scores into the spill file when they are parked there), ``SCORE_ROWS`` rows at a time: the
        softmax's float32 temporaries are a few rows' worth, not the tile's, and on the CPU the heap they
        were freed into is given back (``utils.memory.give_back_heap``) before the next forward."""
        x0, x1 = self._cols[j]
        done = head.shape[1]
        scores = None
        if self._park_scores:
            scores = torch.empty((self._channels() - 1, done, x1 - x0), dtype=torch.uint8, device=self.device)
        for r0 in range(0, done, SCORE_ROWS):
            r1 = min(done, r0 + SCORE_ROWS)
            scored = class_output(head[:, r0:r1], self._weights(r0, r1, x0, x1).clamp_(min=_TINY), self.output)
            if scores is None:
                self._band[:, r0:r1, x0:x1] = scored
            else:
                self._band[r0:r1, x0:x1] = scored[0]
                scores[:, r0:r1] = scored[1:]
        if scores is not None:
            self._spill.put(len(self._cols) + j, scores)
            self._scored[j] = done
        if self.device.type == "cpu":
            # The pieces' temporaries are below glibc's mmap threshold (a fraction of a MB each), so they were
            # freed into the heap, where they would stay resident through the row's next forwards.
            give_back_heap()

    def _weights(self, start: int, stop: int, x0: int, x1: int) -> torch.Tensor:
        """(stop - start, x1 - x0) float32: the summed weights of the patches over the canvas rows
        [y0 + start, y0 + stop) and columns [x0, x1), added in the order the patches came."""
        out = torch.zeros((stop - start, x1 - x0), dtype=torch.float32, device=self.device)
        y0 = self.y0 + start
        for top, left, p, weight in self._boxes:
            r0, r1, c0, c1 = max(top, y0), min(top + p, self.y0 + stop), max(left, x0), min(left + p, x1)
            if r0 < r1 and c0 < c1:
                out[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0].add_(
                    1.0 if weight is None else weight[r0 - top : r1 - top, c0 - left : c1 - left])
        return out

    def end_row(self) -> tuple[int, torch.Tensor]:
        """Close the open row: (first row, band of rows [y0, end))."""
        if self._end is None:
            raise RuntimeError("end_row() without an open row")
        for j in range(self._next, len(self._cols)):
            self._finalise(j)
        start, band = self.y0, self._band
        if self._park_scores:
            band = self._with_scores(band)
        self.y0, self._end, self._band = self._end, None, None
        self._boxes = [box for box in self._boxes if box[0] + box[2] > self.y0]  # boxes with rows still open
        return start, band

    def _with_scores(self, classes: torch.Tensor) -> torch.Tensor:
        """The band (channels, h, W) of the class map (h, W) and the score channels parked in this row
        (rows no patch reached stay 0)."""
        band = torch.zeros((self._channels(), *classes.shape), dtype=torch.uint8, device=self.device)
        band[0] = classes
        for j, rows in self._scored.items():
            x0, x1 = self._cols[j]
            scores = torch.empty((band.shape[0] - 1, rows, x1 - x0), dtype=torch.uint8, device=self.device)
            self._spill.get(len(self._cols) + j, scores)
            band[1:, :rows, x0:x1] = scores
        self._scored.clear()
        return band

    def finish(self) -> tuple[int, torch.Tensor] | None:
        """Hand out whatever rows are left (carried values or zeros) as a last band; None if none."""
        if self.y0 >= self.height:
            return None
        self.begin_row(self.height, self.height)
        return self.end_row()
