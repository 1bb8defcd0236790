"""Scenes of your own cut into the split layout the trainer reads, and the ``dataset.json`` that describes them.

``prepare_scenes`` reads each scene window by window (``dataset.scenes.RasterScene``: the ``--input``
rules for bands, value ranges and nodata) with its labels (``dataset.scene_labels``), and writes
non-overlapping tiles of ``tile_size`` px into ``<dst>/<split>/Sat/<id>_sat.tif`` (uint8 RGB GeoTIFF with
the CRS and transform of its place in the scene) and ``<dst>/<split>/Label/<id>_mask.tif`` (uint8 class
indices, ``IGNORE_INDEX`` where there is no label, georeferenced the same way). Tiles on the right and
bottom edges reach beyond the scene and are padded: black image, no label there. Tiles with no labelled
pixel are dropped and counted.

Splits never share a pixel: tiles do not overlap, and a split takes whole scenes (``split_by="scene"``)
or whole blocks of ``block_tiles`` x ``block_tiles`` tiles (``"block"``). The scenes or blocks are
shuffled by ``seed`` and the first ``round(test x n)`` go to the test split, the next ``round(val x
n)`` to validation (at least one each when the fraction is above 0), the rest to training.

``dataset.json`` records the class table (with ``ignore``: 255), the bands and value rule, the tiling
and split settings and, per scene and split, the tiles written and the labelled pixels per class. The
trainer reads the class table from it (``load_prepared``), so a prepared folder needs no other option.

Re-running into the same destination replaces the earlier result: the tiles of a previous preparation
(a folder with ``dataset.json``, or the marker of an interrupted one) are removed first, every file is
written under a temporary name and renamed into place, and ``dataset.json`` is written last. A
destination holding other files is refused.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dataset.classes import ClassTable, table_from_dict
from dataset.scene_labels import SceneGrid, open_labels
from dataset.scenes import InputRange, RasterScene, stem_of
from dataset.split_layout import IMAGE_SUFFIX, SPLIT_DIRS
from utils.errors import ConfigError, DataError, reason
from utils.files import atomic_path, atomic_write, ensure_writable_dir
from utils.labels import IGNORE_INDEX

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
FORMAT = "fctl-prepared-scenes"
VERSION = 1
MARKER = ".prepare_scenes_running"
LABEL_SUFFIX = "_mask.tif"
SPLITS = ("train", "crossvali", "test")  # the trainer's split names (``SPLIT_DIRS`` gives the folders)


@dataclass(frozen=True)
class PrepareOptions:
    """The settings of a preparation (the command-line options of the same names)."""

    tile_size: int = 2448
    split_by: str = "scene"
    block_tiles: int = 4
    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    class_field: str | None = None
    unlabelled: str | None = None  # None: no label -> ignored; a class name: that class
    bands: tuple[int, ...] | None = None
    input_range: InputRange | None = None

    def check(self, classes: ClassTable) -> int | None:
        """ConfigError for impossible values; returns the unlabelled class index (or None)."""
        if self.tile_size < 16:
            raise ConfigError(f"`tile_size` must be at least 16 px, got {self.tile_size}")
        if self.split_by not in ("scene", "block"):
            raise ConfigError(f"`split_by` must be scene or block, got {self.split_by!r}")
        if self.block_tiles < 1:
            raise ConfigError(f"`block_tiles` must be at least 1, got {self.block_tiles}")
        for name in ("val", "test"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"`{name}` must be a fraction from 0 to below 1, got {value}")
        if self.val + self.test >= 1:
            raise ConfigError(f"`val` + `test` = {self.val + self.test:g} leaves nothing to train on; keep it below 1")
        if self.unlabelled is None or self.unlabelled == "ignore":
            return None
        if self.unlabelled not in classes.names:
            raise ConfigError(f"`unlabelled` {self.unlabelled!r} is neither ignore nor a class of {classes.describe()}")
        return classes.names.index(self.unlabelled)


@dataclass
class SplitCounts:
    """What one split received: tiles and labelled pixels per class."""

    tiles: int = 0
    pixels: list[int] = field(default_factory=list)

    def add(self, labels: np.ndarray, n_class: int) -> None:
        counts = np.bincount(labels.reshape(-1), minlength=256)[:n_class]
        self.pixels = [a + int(b) for a, b in zip(self.pixels or [0] * n_class, counts)]
        self.tiles += 1


class BandStatistics:
    """Running mean and standard deviation of each band (values / 255) over the pixels added, from a
    256-bin histogram per band (exact, and no float copy of a tile)."""

    def __init__(self, count: int) -> None:
        self.histograms = np.zeros((count, 256), dtype=np.int64)

    def add(self, image: np.ndarray, inside: np.ndarray) -> None:
        """image: uint8 (bands, h, w); inside: bool (h, w), the pixels to count."""
        for band, histogram in zip(image, self.histograms):
            histogram += np.bincount(band[inside], minlength=256)

    def mean_std(self) -> tuple[list[float], list[float]]:
        values = np.arange(256) / 255
        n = np.maximum(self.histograms.sum(1), 1)
        mean = (self.histograms * values).sum(1) / n
        std = np.sqrt(np.maximum((self.histograms * values ** 2).sum(1) / n - mean ** 2, 0))
        return [round(float(v), 6) for v in mean], [round(float(max(v, 1e-3)), 6) for v in std]


@dataclass
class PrepareSummary:
    """The outcome of ``prepare_scenes``: per split, per scene, the dropped tiles, and the statistics of
    each band on the training tiles."""

    classes: ClassTable
    splits: dict[str, SplitCounts]
    scenes: list[dict]
    dropped: int
    statistics: BandStatistics

    def lines(self) -> list[str]:
        """The summary printed at the end: per split, tiles and each class's share of the labelled pixels."""
        out = []
        for split, counts in self.splits.items():
            total = sum(counts.pixels) if counts.pixels else 0
            shares = ", ".join(f"{name} {100 * n / total:.1f}%" for name, n in zip(self.classes.names, counts.pixels)) \
                if total else "no labelled pixel"
            out.append(f"{split:<10} {counts.tiles:>5} tiles, {total} labelled px: {shares}")
        out.append(f"dropped    {self.dropped:>5} tiles without any labelled pixel")
        return out


def pair_labels(scenes: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The label file of each scene: the file named after it (among the given files and in the given
    folders), else the one given file that is named after no scene (labels for all scenes); ConfigError
    naming a scene without labels, or when several given files could serve as that shared file."""
    stems = {stem_of(scene) for scene in scenes}
    by_stem: dict[str, str] = {}
    shared = []
    for spec in labels:
        if os.path.isdir(spec) and not spec.lower().endswith(".gdb"):
            for path in sorted(glob.glob(os.path.join(glob.escape(spec), "*"))):
                if os.path.isfile(path):
                    by_stem.setdefault(stem_of(path), path)
        elif not os.path.exists(spec):
            raise ConfigError(f"`labels` {spec} not found; check the path")
        elif stem_of(spec) in stems:
            by_stem[stem_of(spec)] = spec
        else:
            shared.append(spec)
    if len(shared) > 1:
        raise ConfigError(f"`labels` names {len(shared)} files that are named after no scene ({', '.join(shared)}); "
                          f"give one file for all scenes, or name each scene's labels after it")
    out = []
    for scene in scenes:
        path = by_stem.get(stem_of(scene)) or (shared[0] if shared else None)
        if path is None:
            raise ConfigError(f"scene {scene} has no labels: `labels` ({', '.join(labels)}) holds no file named "
                              f"{stem_of(scene)}.<ext> and no file for all scenes")
        out.append(path)
    return out


def _take(n: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, round(fraction * n))


def assign_splits(units: Sequence, options: PrepareOptions) -> dict:
    """unit -> split name: ``units`` (scenes, or blocks) shuffled by ``options.seed``, then test, crossvali,
    train (see the module doc); ConfigError when training would get none."""
    order = list(units)
    random.Random(options.seed).shuffle(order)
    n_test, n_val = _take(len(order), options.test), _take(len(order), options.val)
    if n_test + n_val >= len(order):
        what = "scenes" if options.split_by == "scene" else "blocks"
        raise ConfigError(f"{len(order)} {what} cannot be split into training, `val` {options.val:g} and `test` "
                          f"{options.test:g}: training would get none; give more scenes, use `split_by` block, or lower "
                          f"the fractions")
    splits = ["test"] * n_test + ["crossvali"] * n_val + ["train"] * (len(order) - n_test - n_val)
    return dict(zip(order, splits))


def _folders(dst: str, split: str) -> tuple[str, str]:
    root = os.path.join(dst, SPLIT_DIRS[split])
    return os.path.join(root, "Sat"), os.path.join(root, "Label")


def _check_inputs_outside(dst: str, inputs: Sequence[tuple[str, str]]) -> None:
    """ConfigError when an input (what, path) lies where preparing ``dst`` deletes or writes files: its
    split folders or its ``dataset.json``. Nothing this tool writes may replace a file it reads."""
    owned = [os.path.realpath(os.path.join(dst, DATASET_JSON))]
    roots = [os.path.realpath(os.path.join(dst, SPLIT_DIRS[split])) for split in SPLITS]
    for what, path in inputs:
        real = os.path.realpath(path)
        if real in owned or any(os.path.commonpath([real, root]) == root for root in roots):
            raise ConfigError(f"{what} {path} lies in `dst` {dst}, whose split folders prepare_scenes clears and "
                              f"rewrites; give a `dst` outside the inputs (e.g. a new folder)")


def _clear_destination(dst: str) -> None:
    """Remove the tiles of an earlier preparation; ConfigError when ``dst`` holds files of something else."""
    ours = os.path.exists(os.path.join(dst, DATASET_JSON)) or os.path.exists(os.path.join(dst, MARKER))
    tiles = [path for split in SPLITS for folder in _folders(dst, split)
             for path in glob.glob(os.path.join(glob.escape(folder), "*"))]
    if tiles and not ours:
        raise ConfigError(f"`dst` {dst} already holds split folders that prepare_scenes did not write; choose an empty "
                          f"or new folder")
    for path in tiles:
        os.unlink(path)
    if os.path.exists(os.path.join(dst, DATASET_JSON)):
        os.unlink(os.path.join(dst, DATASET_JSON))


def _write_tile(path: str, data: np.ndarray, grid: SceneGrid, top: int, left: int, nodata: int | None) -> None:
    """One georeferenced GeoTIFF tile: ``data`` (bands, h, w) uint8 at (top, left) of the scene's grid."""
    import rasterio

    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype="uint8",
                   compress="deflate", nodata=nodata)
    if data.shape[0] >= 3:  # R, G, B (and further bands that are no alpha: GDAL takes a 4th uint8 band for one)
        profile["photometric"] = "RGB" if data.shape[0] == 3 else "MINISBLACK"
    if grid.crs is not None:
        profile.update(crs=grid.crs, transform=grid.window_transform(top, left))
    try:
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as out:
            out.write(data)
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise DataError(f"cannot write {path} ({reason(exc)}); choose a writable `dst` with free space") from None


def _grid(path: str, bands: Sequence[int] | None) -> SceneGrid:
    """The pixel grid of a scene raster, without reading pixels; DataError when it lacks one of ``bands``."""
    import rasterio

    if not os.path.isfile(path):
        raise DataError(f"scene {path} not found; check the path")
    try:
        with rasterio.open(path) as src:
            if bands and max(bands) > src.count:
                raise DataError(f"`bands` {','.join(map(str, bands))}: scene {path} has bands 1..{src.count} only; "
                                f"choose band numbers in that range")
            georeferenced = src.crs is not None or not src.transform.is_identity
            return SceneGrid(src.height, src.width, src.crs, src.transform if georeferenced else None)
    except rasterio.errors.RasterioError as exc:
        raise DataError(f"scene {path} is not readable by GDAL ({reason(exc)}); replace the file") from None


def prepare_scenes(scenes: Sequence[str], labels: Sequence[str], classes: ClassTable, dst: str,
                   options: PrepareOptions, progress: Callable = lambda items, **_: items) -> PrepareSummary:
    """Cut ``scenes`` and their ``labels`` into the split layout under ``dst`` (see the module doc).

    ``progress``: wraps the tile iterator of each scene (e.g. ``utils.logging.progress``).
    """
    unlabelled = options.check(classes)
    if not scenes:
        raise ConfigError("`scenes` names no file")
    label_paths = pair_labels(scenes, labels)
    _check_inputs_outside(dst, [*(("scene", p) for p in scenes), *(("labels", p) for p in label_paths)])
    grids = [_grid(path, options.bands) for path in scenes]
    for grid, label_path in zip(grids, label_paths):  # every label source is checked before anything is written
        with open_labels(label_path, grid, classes, class_field=options.class_field, unlabelled=unlabelled):
            pass
    t = options.tile_size
    if options.split_by == "scene":
        assigned = assign_splits(range(len(scenes)), options)
    else:
        b = options.block_tiles
        blocks = [(i, r, c) for i, g in enumerate(grids)
                  for r in range(-(-g.height // (t * b))) for c in range(-(-g.width // (t * b)))]
        assigned = assign_splits(blocks, options)
    ensure_writable_dir(dst, "dst")
    _clear_destination(dst)
    with open(os.path.join(dst, MARKER), "w", encoding="utf-8") as marker:
        marker.write("prepare_scenes is writing this folder; run it again to finish\n")
    for split in SPLITS:
        for folder in _folders(dst, split):
            os.makedirs(folder, exist_ok=True)
    splits = {split: SplitCounts(pixels=[0] * classes.n_class) for split in SPLITS}
    statistics = BandStatistics(len(options.bands or (1, 2, 3)))
    written_scenes, dropped = [], 0
    for index, (path, label_path) in enumerate(zip(scenes, label_paths)):
        with RasterScene(path, options.bands, options.input_range) as scene:
            grid = grids[index]
            record = {"scene": os.path.abspath(path), "labels": os.path.abspath(label_path), "tiles": {}, "dropped": 0,
                      "size": [scene.width, scene.height], "crs": None if scene.crs is None else scene.crs.to_string()}
            with open_labels(label_path, grid, classes, class_field=options.class_field, unlabelled=unlabelled) as source:
                boxes = [(r, c) for r in range(-(-scene.height // t)) for c in range(-(-scene.width // t))]
                for r, c in progress(boxes, desc=stem_of(path), unit="tile"):
                    top, left = r * t, c * t
                    split = assigned[index] if options.split_by == "scene" else \
                        assigned[(index, r // options.block_tiles, c // options.block_tiles)]
                    tile_labels = source.window(top, left, t, t)
                    tile_labels[min(t, scene.height - top):, :] = IGNORE_INDEX  # beyond the scene: no label
                    tile_labels[:, min(t, scene.width - left):] = IGNORE_INDEX
                    valid = scene.read_valid(top, left, t, t)
                    if valid is not None:
                        tile_labels[~valid] = IGNORE_INDEX
                    if not (tile_labels != IGNORE_INDEX).any():
                        dropped += 1
                        record["dropped"] += 1
                        continue
                    image = scene.read(top, left, t, t)
                    if split == "train":
                        inside = np.zeros((t, t), dtype=bool)
                        inside[:min(t, scene.height - top), :min(t, scene.width - left)] = True
                        statistics.add(image, inside if valid is None else inside & valid)
                    tile_id = f"{stem_of(path)}_r{r:03d}_c{c:03d}"
                    sat_dir, label_dir = _folders(dst, split)
                    _write_tile(os.path.join(sat_dir, tile_id + IMAGE_SUFFIX + ".tif"), image, grid, top, left, None)
                    _write_tile(os.path.join(label_dir, tile_id + LABEL_SUFFIX), tile_labels[None], grid, top, left,
                                IGNORE_INDEX)
                    splits[split].add(tile_labels, classes.n_class)
                    record["tiles"][split] = record["tiles"].get(split, 0) + 1
            written_scenes.append(record)
    if splits["train"].tiles == 0:
        raise DataError(f"no training tile has a labelled pixel (of {dropped} dropped); check that the labels cover the "
                        f"scenes of the training split, or change `seed`/`split_by`")
    summary = PrepareSummary(classes, splits, written_scenes, dropped, statistics)
    _write_dataset_json(dst, classes, options, summary)
    os.unlink(os.path.join(dst, MARKER))
    return summary


def prepared_table(classes: ClassTable) -> ClassTable:
    """``classes`` with ``ignore`` 255: the table of a prepared folder (its masks hold ``IGNORE_INDEX``)."""
    raw = classes.record()
    raw["ignore"] = IGNORE_INDEX
    raw["title"] = classes.title
    return table_from_dict(raw, classes.source)


def _write_dataset_json(dst: str, classes: ClassTable, options: PrepareOptions, summary: PrepareSummary) -> None:
    rule = options.input_range
    content = {
        "format": FORMAT, "version": VERSION,
        "classes": prepared_table(classes).record(),
        "ignore": IGNORE_INDEX,
        "bands": list(options.bands or (1, 2, 3)),
        "band_statistics": dict(zip(("mean", "std"), summary.statistics.mean_std())),
        "input_range": None if rule is None else rule.describe(),
        "tile_size": options.tile_size, "split_by": options.split_by, "block_tiles": options.block_tiles,
        "val": options.val, "test": options.test, "seed": options.seed,
        "class_field": options.class_field, "unlabelled": options.unlabelled or "ignore",
        "scenes": summary.scenes,
        "splits": {split: {"folder": SPLIT_DIRS[split], "tiles": c.tiles,
                           "labelled_pixels": dict(zip(classes.names, c.pixels))} for split, c in summary.splits.items()},
        "dropped_tiles": summary.dropped,
    }
    atomic_write(os.path.join(dst, DATASET_JSON), lambda handle: handle.write(json.dumps(content, indent=1)), mode="w")


@dataclass(frozen=True)
class Prepared:
    """What the trainer takes from a prepared folder: the class table, the number of bands and each
    band's mean and standard deviation (values / 255) on the training tiles."""

    classes: ClassTable
    bands: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_prepared(folder: str) -> Prepared | None:
    """What a prepared folder's ``dataset.json`` says (``Prepared``), or None when ``folder`` has none;
    ConfigError for a file that is not a readable preparation."""
    path = os.path.join(folder, DATASET_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); run python -m tools.prepare_scenes again") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a dataset description written by tools.prepare_scenes; remove it or prepare "
                          f"the folder again")
    if raw.get("version") != VERSION:
        raise ConfigError(f"{path} has version {raw.get('version')}, this code reads version {VERSION}; prepare the "
                          f"folder again")
    stats = raw.get("band_statistics") or {}
    count = len(raw.get("bands") or (1, 2, 3))
    mean, std = tuple(stats.get("mean") or (0.5,) * count), tuple(stats.get("std") or (0.25,) * count)
    if len(mean) != count or len(std) != count:
        raise ConfigError(f"{path}: `band_statistics` do not match its {count} bands; prepare the folder again")
    return Prepared(table_from_dict(raw["classes"], path), count, mean, std)
