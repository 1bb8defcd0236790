"""Applying a ``models.refinement.RefinementNet`` to the merged prediction, window by window.

The canvas is cut into a fixed grid of ``tile`` x ``tile`` windows (from the top-left corner). Each
window is refined from the inputs of the window grown by the network's ``halo`` on every side
(clipped to the image; convolutions pad with zeros there, as they would on the whole canvas), and
only its core is kept. Because the output at a pixel depends on inputs within ``halo`` pixels, the
result equals a pass over the whole canvas (up to float rounding), and because the windows are the
same whatever the bands that the merge hands out, a scene streamed band by band gives the same bits
as the same image in memory.

Streaming. ``Refinement.bands`` takes the merged mean-logit bands as they come (top to bottom) and
hands out the refined rows of a row of windows as soon as the merge has delivered the rows ``halo``
below it; it holds only those rows: at most ``tile`` + 2 ``halo`` rows plus the band just received,
across the width. Nothing depends on the image height.

The contextual semantics (``ContextProbabilities``) are the softmax of a global model's mean logits of
the resized whole image, kept at that small size and interpolated (bilinear, as a full-size upsampling
would be) for each window only.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from models.interfaces import SegmentationNetwork
from models.refinement import RefinementNet
from pipeline.config import PipelineConfig
from pipeline.contexts import linear_taps
from pipeline.merge import argmax_classes, class_output
from pipeline.sources import ImageSource
from utils.errors import ConfigError
from utils.memory import reused_heap
from utils.steps import stepwise

TILE = 256  # side of the refinement's windows (their cores); each is read with ``halo`` more on every side


class ContextProbabilities:
    """A global model's class probabilities for one image, sampled at any window of the full canvas.

    ``logits``: (C, h, w) float mean logits of the resized image (``size_g``); ``height``, ``width``:
    the full image. ``window`` gives what ``F.interpolate(probs, (height, width), mode="bilinear",
    align_corners=False)`` gives there, computed for the window alone.
    """

    def __init__(self, logits: torch.Tensor, height: int, width: int) -> None:
        self.probabilities = torch.softmax(logits.float(), dim=0)
        self.rows = linear_taps(logits.shape[-2], height, logits.device)
        self.cols = linear_taps(logits.shape[-1], width, logits.device)
        self.height, self.width = height, width

    def window(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """(C, height, width) float32 probabilities of the canvas window at (top, left)."""
        index, weight = self.rows[0][:, top:top + height], self.rows[1][:, top:top + height]
        probs = self.probabilities
        near = (probs.index_select(1, index[0]) * weight[0, :, None]
                + probs.index_select(1, index[1]) * weight[1, :, None])
        index, weight = self.cols[0][:, left:left + width], self.cols[1][:, left:left + width]
        return near.index_select(2, index[0]) * weight[0] + near.index_select(2, index[1]) * weight[1]


def refinement_inputs(source: ImageSource, logits: torch.Tensor, context: ContextProbabilities | None, top: int,
                      left: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The network's inputs for the canvas window at (top, left) whose mean logits are ``logits`` (C, h, w):
    (image (1, 3, h, w) float in [0, 1], logits (1, C, h, w), context probabilities (1, C, h, w) or None)."""
    height, width = logits.shape[-2:]
    image = source.window(top, left, height, width).float().div_(255).unsqueeze(0)
    ctx = None if context is None else context.window(top, left, height, width).unsqueeze(0)
    return image, logits.unsqueeze(0), ctx


class Refinement:
    """A refinement network with the global (mode-0) model it reads, ready to run on merged bands.

    ``context_net``: the mode-0 network whose prediction of the resized image is the contextual
    semantics; required exactly when ``net`` reads the global context. Both are used in eval mode.
    """

    def __init__(self, net: RefinementNet, context_net: SegmentationNetwork | None = None, tile: int = TILE) -> None:
        if net.reads_context and context_net is None:
            raise ConfigError("this refinement reads the global context: give the global (mode-0) model as "
                              "`glo_path`")
        if not net.reads_context and context_net is not None:
            raise ConfigError("this refinement was trained without a global context; drop `glo_path` for it")
        if context_net is not None and not context_net.spec.whole_image:
            raise ConfigError(f"the refinement's context is a global (mode-0) model, got mode {context_net.mode}")
        if tile < 1:
            raise ValueError(f"tile must be positive, got {tile}")
        self.net, self.context_net, self.tile = net, context_net, tile

    @property
    def halo(self) -> int:
        return self.net.halo

    def eval(self) -> Refinement:
        self.net.eval()
        if self.context_net is not None:
            self.context_net.eval()
        return self

    def _refine_window(self, source: ImageSource, logits: torch.Tensor, context: ContextProbabilities | None,
                       top: int, left: int, cfg: PipelineConfig) -> torch.Tensor:
        image, mean, ctx = refinement_inputs(source, logits, context, top, left)
        with cfg.autocast(image.device):
            refined = self.net(image, mean, ctx)
        return refined.float()[0]

    def bands(self, source: ImageSource, mean_bands: Iterator[tuple[int, torch.Tensor]], height: int, width: int,
              context: ContextProbabilities | None, cfg: PipelineConfig, output: str) -> Iterator[tuple[int, torch.Tensor]]:
        """Refined bands (first row, band) of an image from its merged mean-logit bands (see the module doc).

        ``output``: ``mask`` (h, W) uint8, ``confidence`` (2, h, W) uint8 (class map and top-1 probability x
        255), ``probabilities`` (1 + C, h, W) uint8 (class map and every class's probability x 255), or
        ``logits``/``mean`` (C, h, W) float32 refined logits. ``source``: the image (at least height x
        width); ``context``: the global probabilities when the network reads them.
        """
        return stepwise(self._band_steps(source, mean_bands, height, width, context, cfg, output), torch.no_grad)

    def _band_steps(self, source: ImageSource, mean_bands: Iterator[tuple[int, torch.Tensor]], height: int,
                    width: int, context: ContextProbabilities | None, cfg: PipelineConfig,
                    output: str) -> Iterator[tuple[int, torch.Tensor]]:
        tile, halo = self.tile, self.halo
        held: torch.Tensor | None = None  # merged rows [held_top, held_top + held rows)
        held_top = next_row = 0
        for y0, band in mean_bands:
            if held is None:
                held, held_top = band, y0
            else:
                held = torch.cat([held, band], dim=1)
            received = y0 + band.shape[1]
            del band  # copied into ``held``: not kept while the next band is merged
            while next_row < height and received >= min(height, next_row + tile + halo):
                end = min(height, next_row + tile)
                yield next_row, self._row(source, held, held_top, next_row, end, (height, width), context, cfg,
                                          output)
                next_row = end
                keep = max(held_top, next_row - halo)
                held, held_top = held[:, keep - held_top:].clone(), keep
        if next_row < height:
            raise RuntimeError(f"the merged bands ended at row {next_row} of {height}")

    def _row(self, source: ImageSource, held: torch.Tensor, held_top: int, top: int, bottom: int,
             shape: tuple[int, int], context: ContextProbabilities | None, cfg: PipelineConfig,
             output: str) -> torch.Tensor:
        """The refined rows [top, bottom) of an image of ``shape`` across its width, window by window;
        ``held`` holds the merged rows from ``held_top`` down to at least ``bottom`` + halo (or the end)."""
        tile, halo = self.tile, self.halo
        height, width = shape
        rows = bottom - top
        y0, y1 = max(0, top - halo), min(height, bottom + halo)
        n_class = held.shape[0]
        if output == "mask":
            out = torch.empty((rows, width), dtype=torch.uint8, device=held.device)
        elif output in ("confidence", "probabilities"):
            out = torch.empty((2 if output == "confidence" else 1 + n_class, rows, width), dtype=torch.uint8,
                              device=held.device)
        else:
            out = torch.empty((n_class, rows, width), dtype=torch.float32, device=held.device)
        # The windows of a row have one shape: their buffers reuse the same memory (utils.memory).
        with reused_heap():
            for left in range(0, width, tile):
                right = min(width, left + tile)
                x0, x1 = max(0, left - halo), min(width, right + halo)
                refined = self._refine_window(source, held[:, y0 - held_top:y1 - held_top, x0:x1], context, y0, x0, cfg)
                core = refined[:, top - y0:bottom - y0, left - x0:right - x0]
                if output == "mask":
                    out[:, left:right] = argmax_classes(core)
                elif output in ("confidence", "probabilities"):
                    out[:, :, left:right] = class_output(core, 1.0, output)
                else:
                    out[:, :, left:right] = core
        return out
