"""Whole-image inference: patch grid, contexts, sub-batched forwards, logit merge and TTA.

The released system runs each of the 8 test-time views through the whole pipeline in its own,
rotated frame and sums the raw logits. We do exactly that, but without building a rotated copy of the
image or a canvas per view: each view's patch grid is laid out in the view's frame, every patch box is
mapped back to the original frame, the crop (and its medium-context window) is taken from the original
image and turned into the view, and the logits are turned back and added to ONE canvas in the original
frame. Because the whole image is never rotated, non-square images are not cropped (the original's
defect), and memory is the image, one sub-batch and a band of the canvas (see ``Predictor``).

Jobs (view, box) are independent, so sub-batches may mix views: that is batched TTA for free.

Merge rule (``PipelineConfig.merge``). ``sum`` adds the raw logits, as the released system does. ``hann``
multiplies each patch's logits, turned back into the original frame, by its ``merge.HannWindows`` window
before it is added (the window is symmetric and its untapered edges are the box's edges on the canvas
border, which a view maps to the canvas border, so weighing in the view's frame gives the same weights);
``logit_bands`` and the confidence then give the weighted mean. The whole-image mode has no patches: the
rule changes nothing there.

Streaming. The jobs of all views come in rows, top to bottom (``pipeline.views.job_rows``). Within a
row the jobs run left to right, and ``pipeline.merge.BandMerger`` finalises the canvas column tile by
column tile, so what stays in memory besides the image is: the grid's vertical overlap across the
width (float32), a few p x p tiles, one sub-batch, and the band of final rows (uint8 for masks).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from models.interfaces import SegmentationNetwork
from pipeline.config import PipelineConfig
from pipeline.contexts import global_view, linear_taps
from pipeline.grid import make_grid, pad_to_min
from pipeline.inputs import InputBuilder
from pipeline.merge import OUTPUTS, BandMerger, HannWindows, argmax_classes, class_output
from pipeline.refine import ContextProbabilities, Refinement
from pipeline.sources import ImageSource, TensorSource
from pipeline.views import Job, job_rows, view_shape
from utils.dihedral import VIEWS, View, from_view, to_view
from utils.distributed import unwrap
from utils.errors import ConfigError, ResourceError
from utils.steps import stepwise

READ_AHEAD = 3  # sub-batches whose windows a source is told about ahead of their turn


def out_of_memory(device: torch.device, cfg: PipelineConfig) -> ResourceError:
    """The error for a forward pass that ran out of memory, with the settings that lower it."""
    return ResourceError(f"out of memory on {device} with `sub_batch_size` {cfg.sub_batch_size} (patches per "
                         f"forward pass): lower `sub_batch_size` (e.g. {max(1, cfg.sub_batch_size // 2)}) or "
                         f"`size_p`")


def _uses_channels_last(net: torch.nn.Module) -> bool:
    """True when the network's convolution weights are stored channels_last (``model.to(memory_format=...)``)."""
    for param in net.parameters():
        if param.dim() == 4 and param.shape[-1] * param.shape[-2] > 1:
            return param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
    return False


Image = torch.Tensor | ImageSource


class Predictor:
    """Turns whole images into logits / masks with a ``models.interfaces.SegmentationNetwork`` (an
    ``FCtLNet`` of any mode and backbone, possibly wrapped in DistributedDataParallel, which passes the
    ``NetworkInputs`` through as they are: the builder cuts them on the image's device, which must be
    the model's).

    ``image`` arguments are uint8 tensors (3, H, W) already on the model's device, or image sources
    (``pipeline.sources``: a file read window by window, never whole). A tensor stays uint8 and only
    crops and context windows are converted to float, so a large scene costs 3 bytes per pixel.
    Results come as horizontal bands (``logit_bands``, ``mask_bands``) handed out as soon as no
    pending patch can touch them (see the module doc): memory besides the image does not grow with the
    image height, and grows with its width only by the grid's overlap rows (about 50 x W x C float32
    values) and the band being filled.
    """

    band_values = 1 << 22  # float values per band of the mode-0 path (resized whole image, upsampled)
    # Column tiles of the merger are max(4 * size_p, merge_tile) wide: wide enough that the per-tile
    # work (widen, argmax, shrink) is a few large operations, narrow enough that the tiles under the
    # current patches (at most two) stay small next to a row of the image.
    merge_tile = 2048
    # CPU canvases wider than this park the rows carried between patch rows in a temporary file
    # (``BandMerger(spill=True)``): about 1.5 KB per column with 7 classes, 50 MB at 32768 px.
    spill_width = 8192

    def __init__(self, model: torch.nn.Module, cfg: PipelineConfig, refinement: Refinement | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.net: SegmentationNetwork = unwrap(model)
        if not isinstance(self.net, SegmentationNetwork):
            raise TypeError(f"the predictor needs a SegmentationNetwork (models.interfaces), got {type(self.net).__name__}")
        if refinement is not None and self.net.spec.whole_image:
            raise ConfigError(f"a refinement works on merged patches; mode {self.net.mode} predicts the whole image at "
                              f"once: drop `refine_path` or refine a patch mode")
        if refinement is not None and refinement.net.n_class != self.net.n_class:
            raise ConfigError(f"the refinement is for {refinement.net.n_class} classes, the model has "
                              f"{self.net.n_class}")
        self.refinement = refinement
        # The refinement's global model runs through a predictor of its own (``global_logit_sum``).
        self._context = None if refinement is None or refinement.context_net is None else \
            Predictor(refinement.context_net, cfg)
        self.channels_last = _uses_channels_last(self.net)
        self._hann: dict[torch.device, HannWindows] = {}  # the hann merge's windows, one set per device

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def views(self, tta: bool) -> list[View]:
        return list(VIEWS) if tta else [VIEWS[0]]

    @property
    def memory_format(self) -> torch.memory_format | None:
        """The memory format of the network's inputs: channels_last when its weights are, else None (as cut)."""
        return torch.channels_last if self.channels_last else None

    def to_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the network's input memory format (``memory_format``)."""
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    # --- global-image path (mode 0) -----------------------------------------------------------------
    def global_logit_sum(self, source: ImageSource, views: list[View]) -> torch.Tensor:
        """(C, h, w) float32: the whole-image network's logits of the resized image (``size_g``), turned back
        from each of ``views`` and summed."""
        small = self.to_memory_format(global_view(source, self.cfg.size_g))
        total = None
        with torch.inference_mode():
            for view in views:
                with self.cfg.autocast(self.device):
                    logits = self.model(to_view(small, view)).float()[0]
                total = from_view(logits, view) if total is None else total + from_view(logits, view)
        return total

    def _global_bands(self, source: ImageSource, views: list[View], output: str) -> Iterator[tuple[int, torch.Tensor]]:
        """Logits of the resized image, summed over views at the small scale, upsampled band by band.

        Upsampling is linear and commutes with flips and quarter turns, so summing the views before
        upsampling equals upsampling each view's logits and summing (the original's order). Each band
        of about ``band_values`` floats is made from the two bilinear taps of each of its rows
        (``linear_taps``) and then resized along the width, so nothing of the full size exists and the
        cost is a few operations per output value.
        """
        height, width = source.height, source.width
        total = self.global_logit_sum(source, views)
        total = total.contiguous()
        i_v, w_v = linear_taps(total.shape[-2], height, total.device)
        rows = max(1, min(height, self.band_values // (total.shape[0] * width)))
        for y0 in range(0, height, rows):
            y1 = min(y0 + rows, height)
            near = (total.index_select(1, i_v[0, y0:y1]) * w_v[0, y0:y1, None]
                    + total.index_select(1, i_v[1, y0:y1]) * w_v[1, y0:y1, None])  # (C, rows, g)
            # Along the width interpolate() itself (the height's scale of 1 is the identity).
            band = F.interpolate(near.unsqueeze(0), size=(y1 - y0, width), mode="bilinear", align_corners=False)[0]
            if output == "mask":
                yield y0, argmax_classes(band)
            elif output in ("confidence", "probabilities"):  # every pixel is the sum of one value per view
                yield y0, class_output(band, len(views), output)
            else:
                yield y0, band

    # --- patch path ----------------------------------------------------------------------------------
    def jobs(self, height: int, width: int, views: list[View]) -> list[Job]:
        """Every (view index, top, left) job of an (already padded) image, in the order they are run."""
        return [job for _, _, row in job_rows(height, width, views, self.cfg.size_p) for job in row]

    def _input_builder(self, image: Image, views: list[View], shape: tuple[int, int] | None = None) -> InputBuilder:
        """The builder of what the network reads besides the patches of one image, over ``views``
        (``pipeline.inputs``); ``shape``: the padded (height, width) of a source (see ``global_view``)."""
        return InputBuilder(self.net, image, self.cfg, views=views, shape=shape, memory_format=self.memory_format,
                            autocast=True)

    def _run(self, source: ImageSource, views: list[View], build: InputBuilder, jobs: list[Job]) -> list[torch.Tensor]:
        """Logits (C, p, p) float32 of each job, in the ORIGINAL frame (one forward for all of them)."""
        p = self.cfg.size_p
        # One pass from the uint8 image into the float batch (in the network's memory format): each
        # crop is turned into its view as a strided view of the image and converted while copied.
        x = torch.empty((len(jobs), source.channels, p, p), device=source.device,
                        memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        for xi, (vi, t, l) in zip(x, jobs):
            xi.copy_(to_view(source.window(t, l, p, p), views[vi]))
        x.div_(255)
        inputs = build(jobs)
        with self.cfg.autocast(self.device):
            logits = self.model(x, inputs)
        logits = logits.float()
        return [from_view(li, views[vi]) for li, (vi, _, _) in zip(logits, jobs)]

    def _tagged_batches(self, source: ImageSource, shape: tuple[int, int], views: list[View]):
        """(tags, logits) per sub-batch over the job rows; a tag is (row end, row bottom, job)."""
        height, width = shape
        build = self._input_builder(source, views, shape)
        tagged = ((end, bottom, job) for end, bottom, row in job_rows(height, width, views, self.cfg.size_p) for job in row)
        upcoming = [list(itertools.islice(tagged, self.cfg.sub_batch_size)) for _ in range(1 + READ_AHEAD)]
        while upcoming[0]:
            source.prefetch(build.source_windows([job for batch in upcoming[1:] for _, _, job in batch]))
            batch = upcoming.pop(0)
            upcoming.append(list(itertools.islice(tagged, self.cfg.sub_batch_size)))
            yield batch, self._run(source, views, build, [job for _, _, job in batch])

    def _bands(self, image: Image, tta: bool, progress, output: str) -> Iterator[tuple[int, torch.Tensor]]:
        """The bands of ``output`` (see ``merge.OUTPUTS``), each made under ``torch.inference_mode``."""
        return stepwise(self._band_steps(image, tta, progress, output), torch.inference_mode)

    def _band_steps(self, image: Image, tta: bool, progress, output: str) -> Iterator[tuple[int, torch.Tensor]]:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        views = self.views(tta)
        p = self.cfg.size_p
        if isinstance(image, torch.Tensor):
            height, width = image.shape[-2:]
            whole = TensorSource(image)
            # An in-memory image is padded once; a source reads zeros beyond its edges instead.
            source = whole if self.net.spec.whole_image else TensorSource(pad_to_min(image, p)[0])
        else:
            whole = source = image
            height, width = source.height, source.width
        if self.net.spec.whole_image:
            yield from self._global_bands(source, views, output)
            return
        p_height, p_width = max(height, p), max(width, p)
        merged = output
        if self.refinement is not None or (self.cfg.merge == "hann" and output == "logits"):
            merged = "mean"  # a refinement reads the mean logits, whatever the merge rule
        merger = BandMerger(self.net.n_class, p_height, p_width, source.device, output=merged,
                            tile=max(4 * self.cfg.size_p, self.merge_tile),
                            spill=source.device.type == "cpu" and p_width > self.spill_width)
        try:
            bands = self._merged_bands(source, views, merger, (height, width), progress)
            if self.refinement is None:
                yield from bands
            else:
                context = self._context_probabilities(whole, views)
                yield from self.refinement.bands(source, bands, height, width, context, self.cfg, output)
        finally:
            merger.close()

    def _context_probabilities(self, image: ImageSource, views: list[View]) -> ContextProbabilities | None:
        """The refinement's global context of one (unpadded) image over ``views``, None when it reads none."""
        if self._context is None:
            return None
        mean = self._context.global_logit_sum(image, views) / len(views)
        return ContextProbabilities(mean, image.height, image.width)

    def _windows(self, device: torch.device) -> HannWindows:
        """The hann merge's windows for this predictor's patch size on ``device``, made once."""
        if device not in self._hann:
            self._hann[device] = HannWindows(self.cfg.size_p, device)
        return self._hann[device]

    def _merged_bands(self, source: ImageSource, views: list[View], merger: BandMerger, shape: tuple[int, int],
                      progress) -> Iterator[tuple[int, torch.Tensor]]:
        height, width = shape
        row_end = None
        weights = self._windows(source.device) if self.cfg.merge == "hann" else None

        def cropped(band: tuple[int, torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
            # A generator, so that no variable of this one keeps the band once the consumer moves on.
            y0, rows = band
            if y0 < height:
                yield y0, rows[..., :height - y0, :width]

        for batch, logits in self._tagged_batches(source, (merger.height, merger.width), views):
            for (end, bottom, (_, top, left)), patch in zip(batch, logits):
                if end != row_end:
                    if row_end is not None:
                        yield from cropped(merger.end_row())
                    merger.begin_row(end, bottom)
                    row_end = end
                if weights is None:
                    merger.add(patch, top, left)
                else:
                    window = weights(top, left, merger.height, merger.width)
                    merger.add(patch * window, top, left, window if merger.weighted else None)
            if progress is not None:
                progress.update(len(batch))
            logits = patch = None  # the sub-batch's logits are freed before the next forward, not after it
        if row_end is not None:
            yield from cropped(merger.end_row())
        if (rest := merger.finish()) is not None:
            yield from cropped(rest)

    def logit_bands(self, image: Image, tta: bool = False, progress=None) -> Iterator[tuple[int, torch.Tensor]]:
        """Merged logits of one image over the chosen views, as (first row, (C, h, W) float32) bands: the
        sums under the ``sum`` merge (and in the whole-image mode), the weighted mean under ``hann``, the
        refined logits with a refinement."""
        return self._bands(image, tta, progress, "logits")

    def mean_logit_bands(self, image: Image, tta: bool = False, progress=None) -> Iterator[tuple[int, torch.Tensor]]:
        """The mean of the merged logits (what a refinement reads) as (first row, (C, h, W) float32) bands:
        at each pixel the logits of every patch and view summed and divided by their number, or under
        ``hann`` by their summed weights; refined logits with a refinement. Patch modes only."""
        if self.net.spec.whole_image:
            raise ConfigError(f"mode {self.net.mode} has no merged patches to average")
        return self._bands(image, tta, progress, "mean")

    def mask_bands(self, image: Image, tta: bool = False, progress=None, confidence: bool = False,
                   probabilities: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """Class map of one image as (first row, (h, W) uint8) bands (ties go to the lower class).

        With ``confidence`` each band is (2, h, W) uint8: the class map and the top-1 softmax
        probability x 255 (rounded) of the mean logits, i.e. the summed logits divided by how many
        patches and views were summed at that pixel (``merge.top_probability``), or under the ``hann``
        merge the weighted sums divided by the summed weights. With ``probabilities`` (whatever
        ``confidence``) each band is (1 + C, h, W) uint8: the class map and every class's probability x
        255 of the same mean logits (``merge.class_probabilities``; the top-1 probability is their
        maximum)."""
        output = "probabilities" if probabilities else "confidence" if confidence else "mask"
        return self._bands(image, tta, progress, output)

    def logits(self, image: Image, tta: bool = False, progress=None) -> torch.Tensor:
        """Merged logits (C, H, W) float32 of one image, as ``logit_bands`` (whole canvas: for images that fit)."""
        return torch.cat([band for _, band in self.logit_bands(image, tta, progress)], dim=1)

    def predict(self, image: Image, tta: bool = False, progress=None) -> torch.Tensor:
        """Class map (H, W) uint8 of one image."""
        return torch.cat([band for _, band in self.mask_bands(image, tta, progress)], dim=0)

    def patches_per_image(self, height: int, width: int, tta: bool) -> int:
        if self.net.spec.whole_image:
            return 0
        h, w = max(height, self.cfg.size_p), max(width, self.cfg.size_p)
        return sum(len(make_grid(*view_shape(h, w, v), self.cfg.size_p)) for v in self.views(tta))
