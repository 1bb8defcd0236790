"""Whole-image inference: patch grid, contexts, sub-batched forwards, logit merge and TTA.

The released system runs each of the 8 test-time views through the whole pipeline in its own,
rotated frame and sums the raw logits. We do exactly that, but without building a rotated copy of the
image or a canvas per view: each view's patch grid is laid out in the view's frame, every patch box is
mapped back to the original frame, the crop (and its medium-context window) is taken from the original
image and turned into the view, and the logits are turned back and added to ONE canvas in the original
frame. Because the whole image is never rotated, non-square images are not cropped (the original's
defect), and memory is the image, one sub-batch and a band of the canvas (see ``Predictor``).

Jobs (view, box) are independent, so sub-batches may mix views: that is batched TTA for free.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from utils.contexts import crop_patches, global_view, medium_contexts, resize_weights
from utils.grid import make_grid, pad_to_min
from utils.merge import RollingCanvas
from utils.tta import VIEWS, from_view, to_view

View = tuple[bool, int]


@dataclass(frozen=True)
class PipelineConfig:
    """Geometry and batching of the patch pipeline (the options of the same names)."""

    size_p: int
    size_g: int
    context: int = 3
    sub_batch_size: int = 6
    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16


def view_shape(height: int, width: int, view: View) -> tuple[int, int]:
    """Size of the image as seen in ``view`` (a 90/270 degree turn swaps the sides)."""
    return (width, height) if view[1] % 2 else (height, width)


def view_box_to_original(top: int, left: int, size: int, height: int, width: int, view: View) -> tuple[int, int]:
    """Top-left corner, in the original frame, of the square box at (top, left) of ``view``.

    ``to_view`` flips the columns and then turns the image k times by 90 degrees (torch.rot90 over the
    last two dims). We undo the turns one at a time, tracking the image size of each stage.
    """
    flip, k = view
    # Sizes before each turn: the flipped original is (height, width); each turn swaps them.
    sizes = [(height, width) if i % 2 == 0 else (width, height) for i in range(k + 1)]
    r0, c0, r1, c1 = top, left, top + size - 1, left + size - 1
    for i in range(k, 0, -1):
        _, w_in = sizes[i - 1]
        # rot90(k=1) maps an input pixel (r, c) to (w_in - 1 - c, r); invert: (a, b) -> (b, w_in - 1 - a).
        r0, c0 = c0, w_in - 1 - r0
        r1, c1 = c1, w_in - 1 - r1
    if flip:
        c0, c1 = width - 1 - c0, width - 1 - c1
    return min(r0, r1), min(c0, c1)


def _autocast(device: torch.device, cfg: PipelineConfig):
    if not cfg.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=cfg.amp_dtype)


class Predictor:
    """Turns whole images into logits / masks with an ``FCtLNet`` (any mode, any backbone).

    ``image`` arguments are uint8 tensors (3, H, W) already on the model's device; the image stays
    uint8 and only crops and context windows are converted to float, so a large scene costs 3 bytes
    per pixel. Results come as horizontal bands (``logit_bands``, ``mask_bands``): patches are run
    sorted by their top row and each band is handed out as soon as no pending patch can touch it, so
    the canvas in memory is about (patch + stride) rows high whatever the image height.
    """

    band_rows = 512  # band height of the mode-0 path (resized whole image, upsampled band by band)

    def __init__(self, model: torch.nn.Module, cfg: PipelineConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.net = model.module if hasattr(model, "module") else model

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def views(self, tta: bool) -> list[View]:
        return list(VIEWS) if tta else [VIEWS[0]]

    # --- global-image path (mode 0) -----------------------------------------------------------------
    def _global_bands(self, image: torch.Tensor, views: list[View]) -> Iterator[tuple[int, torch.Tensor]]:
        """Logits of the resized image, summed over views at the small scale, upsampled band by band.

        Upsampling is linear and commutes with flips and quarter turns, so summing the views before
        upsampling equals upsampling each view's logits and summing (the original's order).
        """
        height, width = image.shape[-2:]
        small = global_view(image, self.cfg.size_g)
        total = None
        for view in views:
            with _autocast(self.device, self.cfg):
                logits = self.model(to_view(small, view)).float()[0]
            total = from_view(logits, view) if total is None else total + from_view(logits, view)
        w_v = resize_weights(total.shape[-2], height, total.device, antialias=False)
        w_h = resize_weights(total.shape[-1], width, total.device, antialias=False)
        rows = torch.matmul(total, w_h)  # (C, g, W)
        for y0 in range(0, height, self.band_rows):
            y1 = min(y0 + self.band_rows, height)
            yield y0, torch.matmul(w_v[:, y0:y1].T, rows)

    # --- patch path (modes 1-4) ---------------------------------------------------------------------
    def jobs(self, height: int, width: int, views: list[View]) -> list[tuple[int, int, int]]:
        """(view index, top, left in the original frame) of every patch of every view, sorted by top."""
        out = []
        for vi, view in enumerate(views):
            vh, vw = view_shape(height, width, view)
            for top, left in make_grid(vh, vw, self.cfg.size_p).boxes():
                out.append((vi, *view_box_to_original(top, left, self.cfg.size_p, height, width, view)))
        return sorted(out, key=lambda job: job[1])

    def global_tops(self, image: torch.Tensor, views: list[View]) -> torch.Tensor | None:
        """Frozen global encoder features of every view's resized image: (V, C, hg, wg), or None."""
        if not self.net.needs_global:
            return None
        small = global_view(image, self.cfg.size_g)
        with _autocast(self.device, self.cfg):
            return torch.cat([self.net.encode_global(to_view(small, v)) for v in views]).float()

    def patch_logits(self, image: torch.Tensor, jobs: list[tuple[int, int, int]], views: list[View],
                     tops_g: torch.Tensor | None) -> Iterator[tuple[list[tuple[int, int, int]], torch.Tensor]]:
        """Yield (jobs, logits (B, C, p, p) in the ORIGINAL frame) per sub-batch."""
        p, sb = self.cfg.size_p, self.cfg.sub_batch_size
        for start in range(0, len(jobs), sb):
            batch = jobs[start:start + sb]
            rows = [t for _, t, _ in batch]
            cols = [l for _, _, l in batch]
            x = crop_patches(image, rows, cols, p).float().div_(255)
            x = torch.stack([to_view(xi, views[vi]) for xi, (vi, _, _) in zip(x, batch)])
            medium = None
            if self.net.needs_medium:
                m = medium_contexts(image, rows, cols, p, self.cfg.context)
                medium = torch.stack([to_view(mi, views[vi]) for mi, (vi, _, _) in zip(m, batch)])
            g = None if tops_g is None else tops_g[[vi for vi, _, _ in batch]]
            with _autocast(self.device, self.cfg):
                logits = self.model(x, medium=medium, global_top=g)
            logits = logits.float()
            yield batch, torch.stack([from_view(li, views[vi]) for li, (vi, _, _) in zip(logits, batch)])

    @torch.inference_mode()
    def logit_bands(self, image: torch.Tensor, tta: bool = False, progress=None) -> Iterator[tuple[int, torch.Tensor]]:
        """Summed logits of one image over the chosen views, as (first row, (C, h, W) float32) bands."""
        views = self.views(tta)
        height, width = image.shape[-2:]
        if self.net.mode == 0:
            yield from self._global_bands(image, views)
            return
        padded, _ = pad_to_min(image, self.cfg.size_p)
        p_height, p_width = padded.shape[-2:]
        jobs = self.jobs(p_height, p_width, views)
        tops_g = self.global_tops(padded, views)
        canvas = RollingCanvas(self.net.n_class, p_height, p_width, padded.device)
        done = 0
        for batch, logits in self.patch_logits(padded, jobs, views, tops_g):
            canvas.add(logits, [t for _, t, _ in batch], [l for _, _, l in batch])
            done += len(batch)
            if progress is not None:
                progress.update(len(batch))
            band = canvas.release(jobs[done][1] if done < len(jobs) else p_height)
            if band is not None and band[0] < height:
                y0, rows = band
                yield y0, rows[:, :height - y0, :width]

    def mask_bands(self, image: torch.Tensor, tta: bool = False, progress=None) -> Iterator[tuple[int, torch.Tensor]]:
        """Class map of one image as (first row, (h, W) uint8) bands."""
        for y0, band in self.logit_bands(image, tta, progress):
            yield y0, band.argmax(0).to(torch.uint8)

    def logits(self, image: torch.Tensor, tta: bool = False, progress=None) -> torch.Tensor:
        """Summed logits (C, H, W) float32 of one image (whole canvas: for images that fit)."""
        return torch.cat([band for _, band in self.logit_bands(image, tta, progress)], dim=1)

    def predict(self, image: torch.Tensor, tta: bool = False, progress=None) -> torch.Tensor:
        """Class map (H, W) uint8 of one image."""
        return torch.cat([band for _, band in self.mask_bands(image, tta, progress)], dim=0)

    def patches_per_image(self, height: int, width: int, tta: bool) -> int:
        if self.net.mode == 0:
            return 0
        h, w = max(height, self.cfg.size_p), max(width, self.cfg.size_p)
        return len(self.jobs(h, w, self.views(tta)))
