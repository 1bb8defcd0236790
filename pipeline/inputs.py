"""The one builder of what a network reads besides its patches (``models.inputs.NetworkInputs``).

Which fields a mode reads is declared in ``models.modes`` (``Mode.extra_inputs``); this module turns that
declaration into tensors for a set of patch boxes of one image, for training units and for the
predictor alike, and says how large the windows it cuts are (``window_sides``, which sizes the block
cache of windowed scenes). No other module of the pipeline or the engine asks a mode what it reads.

- ``medium``: the ``context`` x p window centred on each patch, shrunk to p x p;
- ``large_window``: the same with ``context2``;
- ``global_context``: the frozen global encoder's context of the whole image resized to ``size_g``,
  once per image (with test-time views: once per view, each patch taking its view's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from models.inputs import NetworkInputs
from models.interfaces import SegmentationNetwork
from models.modes import Mode
from pipeline.config import PipelineConfig
from pipeline.contexts import context_window, context_windows, global_view
from pipeline.sources import ImageSource, TensorSource
from pipeline.views import Job
from utils.dihedral import View, to_view

# The window fields of NetworkInputs and the PipelineConfig setting that gives each one's side in patches.
WINDOWS = {"medium": "context", "large_window": "context2"}


def window_contexts(spec: Mode, cfg: PipelineConfig) -> dict[str, int]:
    """Each context window that ``spec`` reads, with its side in patch sides (``context``, ``context2``)."""
    return {name: getattr(cfg, setting) for name, setting in WINDOWS.items() if name in spec.extra_inputs}


def window_sides(spec: Mode, cfg: PipelineConfig) -> dict[str, int]:
    """Side in pixels, before shrinking, of each context window that ``spec`` reads."""
    return {name: context * cfg.size_p for name, context in window_contexts(spec, cfg).items()}


def largest_window(spec: Mode, cfg: PipelineConfig) -> int:
    """The largest square a patch of ``spec`` reads around itself: its largest window, or the patch."""
    return max(window_sides(spec, cfg).values(), default=cfg.size_p)


class InputBuilder:
    """Builds the ``NetworkInputs`` of patch boxes of one image for ``net``.

    image: a uint8 (3, H, W) tensor (padded to at least p x p) or an image source
    (``pipeline.sources``). ``views``: the test-time views the jobs refer to; None for training,
    where every job is in the original frame and the inputs are left as cut. ``shape``: the padded
    (height, width) of a source (see ``global_view``). ``memory_format``: the format of the network's
    inputs (None: as cut). ``autocast``: encode the global context under ``cfg.autocast`` (as the
    predictor's forward passes run) and return it in float32.

    The global context is computed once, when the builder is made; each call cuts the windows of
    its jobs, one sub-batch at a time.
    """

    def __init__(self, net: SegmentationNetwork, image: torch.Tensor | ImageSource, cfg: PipelineConfig, *,
                 views: Sequence[View] | None = None, shape: tuple[int, int] | None = None,
                 memory_format: torch.memory_format | None = None, autocast: bool = False) -> None:
        self.source = TensorSource(image) if isinstance(image, torch.Tensor) else image
        self.cfg = cfg
        self.views = None if views is None else list(views)
        self.memory_format = memory_format
        self.windows = window_contexts(net.spec, cfg)
        self.global_context = None
        if "global_context" in net.spec.extra_inputs:
            small = self._formatted(global_view(image, cfg.size_g, shape))
            with cfg.autocast(self.source.device) if autocast else contextlib.nullcontext():
                if self.views is None:
                    self.global_context = net.encode_global(small)
                else:
                    self.global_context = torch.cat([net.encode_global(to_view(small, v)) for v in self.views])
            if autocast:
                self.global_context = self.global_context.float()

    def _formatted(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    def source_windows(self, jobs: Sequence[Job]) -> list[tuple[int, int, int, int]]:
        """The (top, left, height, width) windows of the source that the patches at ``jobs`` and their
        context windows read, in the order they are read: what a source may read ahead."""
        p = self.cfg.size_p
        out = [(t, l, p, p) for _, t, l in jobs]
        for context in self.windows.values():
            for _, t, l in jobs:
                y0, x0, side = context_window(t, l, p, context)
                out.append((y0, x0, side, side))
        return out

    def __call__(self, jobs: Sequence[Job]) -> NetworkInputs:
        """The inputs of the patches at ``jobs`` ((view index, top, left) in the original frame), in order."""
        tops, lefts = [t for _, t, _ in jobs], [l for _, _, l in jobs]
        fields: dict[str, torch.Tensor] = {}
        for name, context in self.windows.items():
            windows = context_windows(self.source, tops, lefts, self.cfg.size_p, context)
            if self.views is not None:
                windows = torch.stack([to_view(w, self.views[vi]) for w, (vi, _, _) in zip(windows, jobs)])
            fields[name] = self._formatted(windows)
        if self.global_context is not None:
            fields["global_context"] = (self.global_context if self.views is None
                                        else self.global_context[[vi for vi, _, _ in jobs]])
        return NetworkInputs(**fields)
