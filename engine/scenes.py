"""Predicting scenes of your own (``--input``): files of any size, GeoTIFF in and out.

Each scene is opened as an image source: a JPEG or PNG is decoded whole by Pillow, as the DeepGlobe
splits are; every other file (GeoTIFF, any raster GDAL reads) is read window by window through
``dataset.scenes.RasterScene`` behind ``pipeline.sources.WindowedSource``, so the scene is never in
memory. The prediction streams band by band into the outputs:

- ``<stem>_mask.tif`` (GeoTIFF inputs: the scene's size, CRS and transform, the class palette as the
  colour table, tiled and compressed; a Cloud-Optimized GeoTIFF with ``cog``) or ``<stem>_mask.png``
  (the DeepGlobe colour PNG); ``SceneOutputs.fmt`` overrides the choice;
- with ``confidence``: ``<stem>_confidence.tif|png``, the top-1 softmax probability x 255;
- with ``probabilities``: ``<stem>_probabilities.tif``, one band per class (named after it):
  round(255 x the softmax of the mean logits), the confidence's definition for every class, same
  georeferencing (a COG with ``cog``); always a TIFF, whatever the mask's format;
- with ``quicklook``: ``<stem>_preview.png`` (``pipeline.quicklook``);
- with ``vectorize``: ``<stem>_mask.<gpkg|geojson|fgb>``, one polygon per connected region of each
  class with its class, area and mean confidence (``dataset.vectors``), nodata and the ``vector_skip``
  classes left out, regions merged across the bands as they stream.

Pixels the scene marks as nodata get ``NODATA`` (255, declared as the GeoTIFF's nodata value) in a
GeoTIFF mask, class 0 in a PNG mask, and confidence and probabilities 0. Every file is written under a temporary name
and renamed when complete; with ``skip_existing`` a scene whose outputs all exist is not predicted
again, so a long batch can be resumed. Under torchrun each process takes every world_size-th scene.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from dataset.classes import DEEPGLOBE, ClassTable
from dataset.geotiff import NODATA, GeoTiffBandWriter
from dataset.io import PngBandWriter, read_image, write_image_png
from dataset.scenes import InputRange, RasterScene, is_remote, sidecar_georeferencing, stem_of, uses_pillow
from dataset.vectors import FORMATS as VECTOR_FORMATS
from dataset.vectors import VectorBandWriter
from pipeline.inputs import largest_window
from pipeline.predictor import Predictor
from pipeline.quicklook import MaskThumbnail, compose, preview_size, scene_thumbnail
from pipeline.sources import TensorSource, WindowedSource
from utils.distributed import DistInfo, all_reduce_max, all_reduce_sum, shard
from utils.errors import ConfigError, DataError, InputFileError
from utils.files import remove_stale_temporaries
from utils.logging import get_logger, peak_memory_mb, progress
from utils.memory import give_back_heap

log = get_logger("scenes")

FORMATS = ("png", "tif")
BLOCK = 512  # side of the blocks a windowed scene is read and cached in
READERS = 4  # threads that read a windowed scene's blocks ahead of the patches (pipeline.sources)
REMOTE_READERS = 8  # the same for a remote scene, whose reads are mostly waiting for the network
OUTPUT_PATTERNS = ("*_mask.png", "*_mask.tif", "*_confidence.png", "*_confidence.tif", "*_probabilities.tif",
                   "*_preview.png", *(f"*_mask.{ext}" for ext in VECTOR_FORMATS))


@dataclass(frozen=True)
class SceneOutputs:
    """Which files each scene gets, and where (see the module doc)."""

    folder: str
    fmt: str | None = None  # None: tif for GDAL rasters, png for JPEG/PNG inputs
    cog: bool = False
    confidence: bool = False
    probabilities: bool = False
    quicklook: bool = False
    skip_existing: bool = False
    classes: ClassTable = DEEPGLOBE  # the colours of the masks and previews
    vectorize: str | None = None  # a key of dataset.vectors.FORMATS
    vector_skip: tuple[int, ...] = ()  # class indices left out of the polygons
    simplify: float = 0.0  # polygon simplification tolerance, CRS units

    def format_of(self, path: str) -> str:
        if self.fmt is not None:
            return self.fmt
        return "png" if uses_pillow(path) else "tif"

    def paths(self, path: str) -> dict[str, str]:
        """{"mask": ..., and "confidence" / "probabilities" / "preview" when asked for} of one input file."""
        stem, ext = stem_of(path), self.format_of(path)
        out = {"mask": os.path.join(self.folder, f"{stem}_mask.{ext}")}
        if self.confidence:
            out["confidence"] = os.path.join(self.folder, f"{stem}_confidence.{ext}")
        if self.probabilities:
            out["probabilities"] = os.path.join(self.folder, f"{stem}_probabilities.tif")
        if self.quicklook:
            out["preview"] = os.path.join(self.folder, f"{stem}_preview.png")
        if self.vectorize is not None:
            out["vectors"] = os.path.join(self.folder, f"{stem}_mask.{self.vectorize}")
        return out


@dataclass(frozen=True)
class SceneReading:
    """How scene pixels become the network's input (``dataset.scenes``): ``bands`` (R, G, B, then any
    further bands the network reads; None: the first three, or the first N for a network of N bands),
    and ``readers``, the threads that read a raster's blocks ahead of the patches (None: ``READERS``,
    ``REMOTE_READERS`` for a remote scene; 0: every block is read in the main thread when needed)."""

    bands: tuple[int, ...] | None = None
    input_range: InputRange | None = None
    readers: int | None = None

    def __post_init__(self) -> None:
        if self.readers is not None and self.readers < 0:
            raise ConfigError(f"`readers` must be 0 or more, got {self.readers}")

    def readers_for(self, path: str) -> int:
        """The reader threads of the scene ``path``."""
        if self.readers is not None:
            return self.readers
        return REMOTE_READERS if is_remote(path) else READERS

    def bands_for(self, count: int) -> tuple[int, ...] | None:
        """The scene bands a network of ``count`` bands reads (None: RasterScene's default, bands 1, 2, 3);
        ConfigError when ``bands`` names another number of them."""
        if self.bands is None:
            return None if count == 3 else tuple(range(1, count + 1))
        if len(self.bands) != count:
            raise ConfigError(f"`bands` names {len(self.bands)} bands ({','.join(map(str, self.bands))}) but the model "
                              f"reads {count}; give {count} band numbers, R, G, B first")
        return self.bands


def is_output(path: str) -> bool:
    """Whether a file's name is that of an output of this module (``OUTPUT_PATTERNS``): folders and
    patterns given as ``--input`` leave such files out (``dataset.scenes.expand_inputs``)."""
    return any(fnmatch.fnmatch(os.path.basename(path), pattern) for pattern in OUTPUT_PATTERNS)


def check_outputs(paths: list[str], outputs: SceneOutputs, reading: SceneReading) -> None:
    """Refuse, before anything runs, combinations that cannot work for these inputs, and any output that
    would replace an input (nothing this module writes may replace a file it reads)."""
    inputs = {os.path.realpath(p): p for p in paths if not is_remote(p)}
    for path in paths:
        for output in outputs.paths(path).values():
            if os.path.realpath(output) in inputs:
                raise ConfigError(f"the output {output} of input {path} would replace the input "
                                  f"{inputs[os.path.realpath(output)]}; choose another `prediction_path` or rename "
                                  f"the input")
    for path in paths:
        folders = [output for output in outputs.paths(path).values() if os.path.isdir(output)]
        if folders:
            raise ConfigError(f"the output {folders[0]} of input {path} is the name of a folder; rename or remove "
                              f"the folder, or choose another `prediction_path`")
    if outputs.cog and any(outputs.format_of(p) != "tif" for p in paths):
        raise ConfigError("`cog` writes GeoTIFF masks, but some inputs get PNG masks; pass `output_format` tif")
    if reading.bands is not None or reading.input_range is not None:
        pillow = [p for p in paths if uses_pillow(p)]
        if pillow:
            raise ConfigError(f"`bands` and `input_range` apply to rasters read through GDAL, but {pillow[0]} is a "
                              f"JPEG/PNG, read as 8-bit RGB; predict such files in a separate run")


def remove_stale_outputs(folder: str) -> list[str]:
    """Temporaries of outputs that an interrupted run left in ``folder``."""
    return [path for pattern in OUTPUT_PATTERNS for path in remove_stale_temporaries(folder, pattern)]


def cache_blocks(predictor: Predictor, block: int = BLOCK) -> int:
    """Blocks a windowed scene keeps: one patch row's height of windows (the largest square a patch
    reads, ``pipeline.inputs.largest_window``, plus the spread of a row's tops) across a sub-batch of
    patches side by side, plus one block each way."""
    cfg = predictor.cfg
    side = largest_window(predictor.net.spec, cfg)
    rows = math.ceil((side + cfg.size_p // 8) / block) + 1
    cols = math.ceil((cfg.sub_batch_size * cfg.size_p + side) / block) + 1
    return rows * cols


@contextlib.contextmanager
def open_scene(path: str, reading: SceneReading, predictor: Predictor, device: torch.device):
    """(source, GeoTIFF profile, RasterScene or None) of one input file."""
    if uses_pillow(path):
        if predictor.net.bands.count != 3:
            raise ConfigError(f"{path} is a JPEG/PNG, read as 8-bit RGB, but the model reads "
                              f"{predictor.net.bands.describe()}; give it a raster with all its bands")
        image = read_image(path).to(device)
        yield TensorSource(image), {"height": image.shape[-2], "width": image.shape[-1],
                                    **sidecar_georeferencing(path)}, None
        return
    bands = predictor.net.bands
    origin = None if reading.bands is not None else f"the model reads {bands.describe()}"
    with RasterScene(path, reading.bands_for(bands.count), reading.input_range, bands_from=origin) as scene, \
            WindowedSource(scene, device, BLOCK, cache_blocks(predictor),
                           readers=reading.readers_for(path)) as source:
        yield source, scene.profile(), scene


def _georeferenced(profile: dict) -> bool:
    return any(profile.get(key) is not None for key in ("crs", "transform", "gcps", "rpcs"))


class _Outputs:
    """The writers of one scene, published together when the block succeeds."""

    def __init__(self, paths: dict[str, str], fmt: str, profile: dict, nodata: bool, outputs: SceneOutputs) -> None:
        self.paths, self.fmt, self.profile, self.nodata, self.cog = paths, fmt, profile, nodata, outputs.cog
        self.palette, self.names = outputs.classes.colours, list(outputs.classes.names)
        self.settings = outputs
        self.stack = contextlib.ExitStack()

    def _writer(self, path: str, palette):
        if self.fmt == "tif":
            nodata = NODATA if (self.nodata and palette is not None) else None
            return GeoTiffBandWriter(path, self.profile, palette=palette, nodata=nodata, cog=self.cog)
        return PngBandWriter(path, self.profile["height"], self.profile["width"], palette=palette)

    def __enter__(self) -> _Outputs:
        with self.stack as stack:
            self.vectors = None
            if "vectors" in self.paths:  # first: it refuses a scene it cannot vectorize before any file is made
                self.vectors = stack.enter_context(VectorBandWriter(
                    self.paths["vectors"], self.profile, self.names, self.settings.vectorize,
                    skip=self.settings.vector_skip, simplify=self.settings.simplify))
            self.mask = stack.enter_context(self._writer(self.paths["mask"], self.palette))
            self.confidence = None
            if "confidence" in self.paths:
                self.confidence = stack.enter_context(self._writer(self.paths["confidence"], None))
            self.probabilities = None
            if "probabilities" in self.paths:
                self.probabilities = stack.enter_context(GeoTiffBandWriter(
                    self.paths["probabilities"], self.profile, cog=self.cog, descriptions=self.names))
            self.stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        return bool(self.stack.__exit__(*exc))


def _predict_scene(predictor: Predictor, path: str, outputs: SceneOutputs, reading: SceneReading,
                   device: torch.device, tta: bool, show: bool) -> tuple[int, int]:
    """Predict one scene into its outputs; returns (pixels, patches)."""
    paths = outputs.paths(path)
    fmt = outputs.format_of(path)
    with open_scene(path, reading, predictor, device) as (source, profile, scene):
        height, width = source.height, source.width
        if scene is not None:
            log.info(f"{path}: {scene.describe()}")
        if fmt == "png" and _georeferenced(profile):
            log.warning(f"{path} is georeferenced but its PNG outputs cannot carry it: they will not lie on the map "
                        f"in a GIS; pass `output_format` tif to keep the CRS and transform")
        n = predictor.patches_per_image(height, width, tta)
        masked = scene is not None and scene.has_mask
        invalid_pixels = 0
        thumbnail = None
        if outputs.quicklook:
            size = preview_size(height, width)
            thumbnail = MaskThumbnail(height, width, size)
            picture = scene_thumbnail(source, size)
        with progress(total=n, enabled=show and n > 0, desc=stem_of(path), unit="patch", leave=False) as bar, \
                _Outputs(paths, fmt, profile, masked, outputs) as out:
            top_needed = out.confidence is not None or out.vectors is not None
            for y0, band in predictor.mask_bands(source, tta=tta, progress=bar, confidence=top_needed,
                                                 probabilities=out.probabilities is not None):
                invalid_pixels += _write_band(out, y0, band, scene if masked else None, thumbnail)
                del band  # gone before the next band is merged: one band in memory, not two
                give_back_heap()  # what writing it freed is not held through the next forward
            if thumbnail is not None:
                write_image_png(paths["preview"], compose(picture, thumbnail.image, outputs.classes.colours,
                                                          NODATA if fmt == "tif" and masked else None))
        if masked:
            log.info(f"{path}: {100 * invalid_pixels / (height * width):.2f}% of the scene masked "
                     f"({scene.masking()}), written as nodata")
    return height * width, n


def _write_band(out: _Outputs, y0: int, band: torch.Tensor, scene: RasterScene | None,
                thumbnail: MaskThumbnail | None) -> int:
    """Write one band of the predictor's class output into every output of a scene; ``scene``: the
    raster whose mask marks nodata pixels (None: every pixel has data). Returns its nodata pixels."""
    scores = out.confidence is not None or out.vectors is not None or out.probabilities is not None
    classes = band[0] if scores else band
    width = classes.shape[1]
    valid = scene.read_valid(y0, 0, classes.shape[0], width) if scene is not None else None
    top = None
    if out.confidence is not None or out.vectors is not None:  # the top-1 probability: the largest one
        top = band[1] if out.probabilities is None else band[1:].max(dim=0).values
    if out.vectors is not None:  # the classes before nodata is written into them
        out.vectors.write(y0, classes.cpu().numpy(), top.cpu().numpy(), valid)
    invalid_pixels = 0
    if valid is not None:
        invalid_pixels = int(valid.size - np.count_nonzero(valid))
        invalid = torch.from_numpy(~valid).to(classes.device)
        classes = classes.masked_fill(invalid, NODATA if out.fmt == "tif" else 0)
    out.mask.write(classes.cpu().numpy())
    if out.confidence is not None:
        out.confidence.write((top if valid is None else top.masked_fill(invalid, 0)).cpu().numpy())
    if out.probabilities is not None:
        each = band[1:] if valid is None else band[1:].masked_fill(invalid, 0)
        out.probabilities.write(each.cpu().numpy())
    if thumbnail is not None:
        thumbnail.add(y0, classes)
    return invalid_pixels


def predict_scenes(predictor: Predictor, paths: list[str], outputs: SceneOutputs, reading: SceneReading,
                   device: torch.device, info: DistInfo, *, tta: bool, skip_bad: bool = False) -> dict:
    """Predict this process's share of ``paths``; returns the summary over all processes:
    scenes done, skipped (existing outputs, or unreadable with ``skip_bad``), pixels, patches,
    seconds (of the slowest process) and peak memory in MB (of the largest)."""
    started = time.time()
    done = existing = bad = pixels = patches = 0
    predictor.net.eval()
    mine = [paths[i] for i in shard(list(range(len(paths))), info)]
    for path in progress(mine, enabled=info.is_main and len(mine) > 1, desc="scenes", unit="scene"):
        if outputs.skip_existing and all(os.path.isfile(p) for p in outputs.paths(path).values()):
            existing += 1
            continue
        try:
            scene_pixels, scene_patches = _predict_scene(predictor, path, outputs, reading, device, tta, info.is_main)
        except InputFileError as exc:
            if not skip_bad or exc.path != path:  # only the scene itself may be skipped; output errors always stop
                raise
            log.warning(f"skipped: {exc}")
            bad += 1
            continue
        done += 1
        pixels += scene_pixels
        patches += scene_patches
    counts = all_reduce_sum(torch.tensor([done, existing, bad, pixels, patches], dtype=torch.int64, device=device))
    worst = all_reduce_max(torch.tensor([time.time() - started, peak_memory_mb(device)], dtype=torch.float64,
                                        device=device))
    if int(counts[2]) and int(counts[2]) == len(paths):
        raise DataError(f"all {len(paths)} inputs were unreadable and skipped (`skip_bad_images`); nothing was "
                        f"written: fix or replace the files listed in the warnings above")
    return {"scenes": int(counts[0]), "existing": int(counts[1]), "skipped": int(counts[2]), "pixels": int(counts[3]),
            "patches": int(counts[4]), "seconds": float(worst[0]), "peak_memory_mb": float(worst[1])}
