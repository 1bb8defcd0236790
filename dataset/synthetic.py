"""A seeded generator of small DeepGlobe-format scenes in which context decides some labels.

Purpose: a data set that trains on a laptop CPU in minutes and on which the context-using FCtL modes
(2: medium context, 4: medium + global) can be seen to beat the patch-only mode 1.

Layout written (same as python -m tools.prepare_deepglobe, so every tool reads it unchanged):
  <out>/train/{Sat,Label}, <out>/crossvali/{Sat,Label}, <out>/offical_crossvali/{Sat,Label}
with `<id>_sat.png` images (PNG: no JPEG noise, exact bytes) and `<id>_mask.png` class-index masks
('L' mode). The test split also gets labels so that it can be evaluated. Ids are `train0000`,
`crossvali0000`, `test0000`, ...; image i of a split depends only on (seed, split, i, size), so adding
images never changes the existing ones.

Scene design (land-cover shapes scale with the image, textures are in pixels):
  - Land cover: three region types compete through multi-scale noise fields (3-5 octaves of smoothly
    interpolated random grids, coarsest 1-2 cells per image side) plus a per-type bias; each pixel takes
    the type with the largest value, which gives organic regions with ragged borders. The types are
    "field" (the smoothest and most common, about half the pixels, like agriculture in DeepGlobe),
    forest, and the scene's "settlement" type (below), which covers 5-45% of the image.
  - Context decides: each scene is a "farm" or a "wild" scene (alternating within a split). In a farm
    scene the settlement type is urban (villages) and field texture is labelled agriculture (2); in a
    wild scene it is barren land and field texture is rangeland (3). Field pixels of both labels come
    from the same texture distribution. A patch that shows neither urban nor barren land therefore
    carries no information about its field label, while the 3x medium window and the global view almost
    always show the settlement type (every scene has at least 5% of it). Settlement regions are large,
    so a context encoder sees them even after the 3x shrink of the medium window, and pooled over the
    window they shift its features a lot (a small cue such as a lake barely moves pooled features).
  - Water: a lake (a ragged blob 14-20% of the image side across) in half of the scenes, of either type,
    so that water is a class to learn but says nothing about the scene type.
  - Textures: each type has its own colour and noise pattern: urban = grey blocks (random roof
    brightness) separated by dark streets; forest = dark green blotches; barren = light tan speckle;
    water = smooth dark blue; field = olive-yellow, mid-scale mottling plus faint parallel furrows whose
    direction varies per image. A per-image brightness gain (0.9..1.1) stops colour look-ups from being
    exact.
  - Class 0 (unknown) is not used.

`context_stats` measures this from the label masks (docs/demo.md has the numbers): the share
of patch windows that show no settlement, and the accuracy on field pixels of three oracles: one that
sees only the patch (urban in it -> agriculture, barren -> rangeland, neither -> the best constant answer,
chosen with hindsight, so it is an upper bound for any patch-only model that does not know where its
patch lies), one that sees the centred 3x window (urban in it -> agriculture), and one that sees the
whole image.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from dataset.io import write_image_png, write_index_png
from dataset.split_layout import SPLIT_DIRS

log = logging.getLogger(__name__)

URBAN, AGRICULTURE, RANGELAND, FOREST, WATER, BARREN = 1, 2, 3, 4, 5, 6
FIELD_LABELS = (AGRICULTURE, RANGELAND)
SPLIT_CODES = {"train": 0, "crossvali": 1, "test": 2}
Rgb = tuple[float, float, float]

# Region types drawn by the noise competition: (label, coarsest cells per side, octaves, bias).
# FIELD is resolved to agriculture or rangeland, SETTLEMENT to urban or barren land, per scene.
_FIELD, _SETTLEMENT = -1, -2
_REGIONS = (
    (_FIELD, 1, 3, 1.0),
    (_SETTLEMENT, 1, 3, 0.6),
    (FOREST, 2, 5, -0.1),
)
_SETTLEMENT_ROW = [label for label, *_ in _REGIONS].index(_SETTLEMENT)
MIN_SIZE = 32  # smallest image side the generator accepts
MIN_SETTLEMENT = 0.05  # share of every image, so that every context shows the scene type
LAKE_SHARE = 0.5  # share of scenes (of either type) with a lake
DETAIL_PX = 12  # feature width of the border detail (``detail``), in pixels


def _interpolation_weights(cells: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For `size` output points resampling a (cells + 1)-point grid: the left grid index (int64) and the
    smoothstep weight of the right neighbour (float32); smoothstep keeps the slope continuous at grid
    points, so the noise shows no creases."""
    position = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    left = np.minimum(position.astype(np.int64), cells - 1)
    t = position - left
    return left, t * t * (3.0 - 2.0 * t)


def smooth_noise(rng: np.random.Generator, count: int, size: int, cells: int) -> np.ndarray:
    """(count, size, size) float32 noise with features about size / cells pixels wide, std about 0.6.

    Separable interpolation by gathering the two neighbours (no matrix product: BLAS threads fight over
    shared CPU cores and made this 50x slower)."""
    cells = max(1, int(cells))
    grid = rng.standard_normal((count, cells + 1, cells + 1), dtype=np.float32)
    left, t = _interpolation_weights(cells, size)
    rows = grid[:, left, :] * (1.0 - t)[None, :, None] + grid[:, left + 1, :] * t[None, :, None]
    return rows[:, :, left] * (1.0 - t) + rows[:, :, left + 1] * t


def fractal_noise(rng: np.random.Generator, count: int, size: int, cells: int, octaves: int) -> np.ndarray:
    """(count, size, size) float32 sum of `octaves` smooth-noise layers, each twice as fine and half as
    strong as the previous, starting at `cells` cells per side."""
    total = np.zeros((count, size, size), dtype=np.float32)
    for octave in range(octaves):
        total += (0.5**octave) * smooth_noise(rng, count, size, cells * 2**octave)
    return total


def _land_cover(rng: np.random.Generator, size: int, farm: bool, detail: float = 0.0) -> np.ndarray:
    """(size, size) int8 region labels (with _FIELD for field texture) from competing noise fields; the
    settlement type (urban in a farm scene, barren in a wild one) covers at least MIN_SETTLEMENT.
    ``detail`` > 0 adds to every field a two-octave noise with features about ``DETAIL_PX`` px wide and
    std about 0.6 x ``detail``: borders become fine and ragged at the scale of a few pixels."""
    scores = np.empty((len(_REGIONS), size, size), dtype=np.float32)
    for k, (_, cells, octaves, bias) in enumerate(_REGIONS):
        scores[k] = fractal_noise(rng, 1, size, cells, octaves)[0] + bias
    if detail > 0:
        scores += detail * fractal_noise(rng, len(_REGIONS), size, max(1, size // DETAIL_PX), 2)
    settlement = URBAN if farm else BARREN
    labels = np.array([settlement if label == _SETTLEMENT else label for label, *_ in _REGIONS], dtype=np.int8)
    region = labels[scores.argmax(axis=0)]
    if (region == settlement).mean() < MIN_SETTLEMENT:
        # Grow it where it comes closest to winning (a connected, organic shape).
        margin = scores[_SETTLEMENT_ROW] - np.delete(scores, _SETTLEMENT_ROW, axis=0).max(axis=0)
        region[margin >= np.quantile(margin, 1.0 - MIN_SETTLEMENT)] = settlement
    return region


def _lake(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) bool: one lake with a ragged shore, 14-20% of the image side across, its centre in
    the middle half of the image."""
    centre = size * rng.uniform(0.25, 0.75, 2)
    radius = size * rng.uniform(0.07, 0.10)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    distance = np.hypot(yy - centre[0], xx - centre[1])
    shore = radius * (1.0 + 0.25 * smooth_noise(rng, 1, size, 6)[0])
    return distance <= shore


def _textures(rng: np.random.Generator, size: int, region: np.ndarray, lake: np.ndarray) -> np.ndarray:
    """(size, size, 3) uint8 image: each region type painted with its own texture."""
    image = np.zeros((size, size, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def paint(mask: np.ndarray, colour: Rgb, shade: np.ndarray, tint: Rgb = (1.0, 1.0, 1.0)) -> None:
        image[mask] = np.asarray(colour, np.float32) + shade[mask][:, None] * np.asarray(tint, np.float32)

    def white(amplitude: float) -> np.ndarray:
        return amplitude * rng.standard_normal((size, size), dtype=np.float32)

    angle = rng.uniform(0, np.pi)
    furrows = 7.0 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / 7.0)
    field = 30.0 * smooth_noise(rng, 1, size, size / 12)[0] + furrows + white(6.0)
    paint(region == _FIELD, (150, 148, 78), field, (1.0, 1.0, 0.7))

    block = 10
    roofs = rng.normal(0.0, 25.0, (size // block + 1, size // block + 1)).astype(np.float32)
    rows, cols = (yy // block).astype(np.int64), (xx // block).astype(np.int64)
    street = ((yy % block) < 2) | ((xx % block) < 2)
    urban = np.where(street, -45.0, roofs[rows, cols]) + white(8.0)
    paint(region == URBAN, (128, 122, 128), urban)

    forest = 40.0 * smooth_noise(rng, 1, size, size / 5)[0] + white(6.0)
    paint(region == FOREST, (42, 82, 40), forest, (0.6, 1.0, 0.6))

    barren = 15.0 * smooth_noise(rng, 1, size, size / 40)[0] + white(12.0)
    paint(region == BARREN, (188, 168, 136), barren)

    water = 8.0 * smooth_noise(rng, 1, size, size / 30)[0] + white(3.0)
    paint(lake, (36, 62, 122), water, (0.5, 0.7, 1.0))

    image *= rng.uniform(0.9, 1.1)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def make_scene(rng: np.random.Generator, size: int, farm: bool, detail: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 (size, size, 3), label uint8 (size, size)). `farm`: urban settlements and
    field texture labelled agriculture; otherwise barren land and rangeland. Either may have a lake.
    ``detail``: see ``_land_cover`` (0: the default scenes, unchanged)."""
    region = _land_cover(rng, size, farm, detail)
    has_lake = rng.random() < LAKE_SHARE
    lake = _lake(rng, size) if has_lake else np.zeros((size, size), dtype=bool)
    image = _textures(rng, size, region, lake)
    label = region.astype(np.uint8)
    label[region == _FIELD] = AGRICULTURE if farm else RANGELAND
    label[lake] = WATER
    return image, label


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image `index` of `split`: independent of how many images are made."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def is_farm(seed: int, split: str, index: int) -> bool:
    """Scene type: alternating within a split (balanced in any count), phase set by the seed."""
    phase = int(np.random.default_rng([seed, SPLIT_CODES[split]]).integers(2))
    return (index + phase) % 2 == 0


def scene_id(split: str, index: int) -> str:
    return f"{split}{index:04d}"


def _remove_stale(folder: str, split: str, keep: set[str]) -> None:
    """Delete synthetic files of an earlier, larger run so that they do not join the split."""
    pattern = re.compile(rf"^({re.escape(split)}\d{{4,}})_(sat|mask)\.png$")
    for name in os.listdir(folder):
        match = pattern.match(name)
        if match and match.group(1) not in keep:
            os.remove(os.path.join(folder, name))
            log.info("removed stale synthetic file %s", os.path.join(folder, name))


def generate(out_dir: str, n_train: int, n_val: int, n_test: int, size: int, seed: int,
             detail: float = 0.0) -> dict[str, list[str]]:
    """Write a synthetic data set in the DeepGlobe layout under `out_dir`; returns the ids per split.

    Deterministic: the same arguments give byte-identical files. Re-running with fewer images removes
    the surplus synthetic files of the earlier run. ``detail`` > 0 gives fine, ragged class borders
    (``_land_cover``); 0 gives the same files as before it existed.
    """
    if size < MIN_SIZE:
        raise ValueError(f"synthetic images need size >= {MIN_SIZE}")
    if not detail >= 0:
        raise ValueError(f"detail must be 0 or more, got {detail}")
    def write(root: str, name: str, rng: np.random.Generator, farm: bool) -> None:
        image, label = make_scene(rng, size, farm, detail)
        write_image_png(os.path.join(root, "Sat", f"{name}_sat.png"), image)
        write_index_png(os.path.join(root, "Label", f"{name}_mask.png"), label)

    return write_splits(out_dir, (n_train, n_val, n_test), seed, write, _remove_stale, is_farm)


def write_splits(out_dir: str, counts: tuple[int, int, int], seed: int, write, remove_stale, kind) -> dict[str, list[str]]:
    """The per-split loop of the synthetic generators: the split folders, the surplus of an earlier run
    removed (``remove_stale(folder, split, keep)``), then ``write(root, id, rng, kind(seed, split, i))``
    for image i of each split; returns the ids per split."""
    written: dict[str, list[str]] = {}
    for split, count in zip(("train", "crossvali", "test"), counts):
        root = os.path.join(out_dir, SPLIT_DIRS[split])
        ids = [scene_id(split, i) for i in range(count)]
        for sub in ("Sat", "Label"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
            remove_stale(os.path.join(root, sub), split, set(ids))
        for i, name in enumerate(ids):
            write(root, name, scene_rng(seed, split, i), kind(seed, split, i))
        written[split] = ids
    return written


def _window_sums(integral: np.ndarray, tops: np.ndarray, lefts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Sums over windows [top, top+height) x [left, left+width), clipped to the image, from an integral
    image padded with a leading zero row and column. tops/lefts broadcast against each other."""
    limit_y, limit_x = integral.shape[0] - 1, integral.shape[1] - 1
    y0, y1 = np.clip(tops, 0, limit_y), np.clip(tops + height, 0, limit_y)
    x0, x1 = np.clip(lefts, 0, limit_x), np.clip(lefts + width, 0, limit_x)
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    out[1:, 1:] = mask.cumsum(0).cumsum(1)
    return out


def context_stats(
    labels: list[np.ndarray],
    patch: int,
    context: int = 3,
    images: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """How much context the field labels need, measured on label masks (uint8 (H, W) each).

    Windows: all patch x patch windows at stride patch // 2 (plus the last row/column). Returns
      blind_windows: share of windows holding field texture but no settlement (urban or barren);
      patch_oracle / window_oracle / global_oracle: accuracy on field pixels (summed over windows) of a
        rule that sees the patch / the centred context*patch window / the whole image (see module doc);
      patch_oracle_blind / window_oracle_blind: the same, only over the blind windows;
      colour_gap (when images are given): largest difference, over R, G, B and over mean and standard
        deviation, between agriculture and rangeland pixels (0 = same colour statistics).
    """
    margin = (context - 1) * patch // 2
    hit = {"patch": 0, "window": 0, "global": 0, "window_blind": 0}
    blind_agri = blind_range = 0
    field_total = blind_total = windows = blind_windows = 0
    for label in labels:
        height, width = label.shape
        tops = np.unique(np.r_[np.arange(0, max(height - patch, 0) + 1, patch // 2), max(height - patch, 0)])
        lefts = np.unique(np.r_[np.arange(0, max(width - patch, 0) + 1, patch // 2), max(width - patch, 0)])
        tops, lefts = tops[:, None], lefts[None, :]
        field, agri = np.isin(label, FIELD_LABELS), label == AGRICULTURE
        n_field = _window_sums(_integral(field), tops, lefts, patch, patch)
        n_agri = _window_sums(_integral(agri), tops, lefts, patch, patch)
        n_range = n_field - n_agri
        urban, barren = _integral(label == URBAN), _integral(label == BARREN)
        urban_in = _window_sums(urban, tops, lefts, patch, patch) > 0
        barren_in = _window_sums(barren, tops, lefts, patch, patch) > 0
        side = patch + 2 * margin
        urban_around = _window_sums(urban, tops - margin, lefts - margin, side, side)
        barren_around = _window_sums(barren, tops - margin, lefts - margin, side, side)
        blind = ~urban_in & ~barren_in & (n_field > 0)
        windows += blind.size
        blind_windows += int(blind.sum())
        field_total += int(n_field.sum())
        blind_total += int(n_field[blind].sum())
        # A patch showing a settlement knows its scene (urban -> agriculture); a blind one must guess.
        hit["patch"] += int(np.where(urban_in, n_agri, 0).sum() + np.where(barren_in & ~urban_in, n_range, 0).sum())
        blind_agri += int(n_agri[blind].sum())
        blind_range += int(n_range[blind].sum())
        window_correct = np.where(urban_around >= barren_around, n_agri, n_range)
        hit["window"] += int(window_correct.sum())
        hit["window_blind"] += int(window_correct[blind].sum())
        hit["global"] += int((n_agri if urban[-1, -1] >= barren[-1, -1] else n_range).sum())
    stats = {
        "windows": float(windows),
        "blind_windows": blind_windows / max(windows, 1),
        "patch_oracle": (hit["patch"] + max(blind_agri, blind_range)) / max(field_total, 1),
        "window_oracle": hit["window"] / max(field_total, 1),
        "global_oracle": hit["global"] / max(field_total, 1),
        "patch_oracle_blind": max(blind_agri, blind_range) / max(blind_total, 1),
        "window_oracle_blind": hit["window_blind"] / max(blind_total, 1),
    }
    if images is not None:
        stats["colour_gap"] = _colour_gap(images, labels)
    return stats


def _colour_gap(images: list[np.ndarray], labels: list[np.ndarray]) -> float:
    pixels = {}
    for cls in FIELD_LABELS:
        chunks = [image[label == cls] for image, label in zip(images, labels)]
        pixels[cls] = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 3), np.float32)
    if any(len(p) == 0 for p in pixels.values()):
        return float("nan")
    a, b = pixels[AGRICULTURE], pixels[RANGELAND]
    return float(max(np.abs(a.mean(0) - b.mean(0)).max(), np.abs(a.std(0) - b.std(0)).max()))


def _raster_values(top: int, left: int, height: int, width: int, bands: int, seed: int) -> np.ndarray:
    """uint8-range int64 (bands, height, width): flat 97 px cells of hashed colours plus a fine diagonal
    texture, a pure function of the pixel position, so any window can be made on its own."""
    rows = np.arange(top, top + height, dtype=np.int64)[:, None]
    cols = np.arange(left, left + width, dtype=np.int64)[None, :]
    out = np.empty((bands, height, width), dtype=np.int64)
    for b in range(bands):
        cell = ((rows // 97) * 73856093) ^ ((cols // 97) * 19349663) ^ ((b + 1) * 83492791) ^ (seed * 2654435761)
        out[b] = (cell % 200) + (rows * 7 + cols * 13 + b * 5) % 23 + 16
    return out


def write_synthetic_raster(path: str, height: int, width: int, *, bands: int = 3, dtype: str = "uint8",
                           crs: str | None = "EPSG:32633", origin: tuple[float, float] = (500000.0, 4650000.0),
                           pixel: float = 0.5, nodata: float | None = None, nodata_box: tuple[int, int, int, int] | None = None,
                           tile: int = 256, seed: int = 0, noise: int = 0) -> None:
    """A tiled, deflate-compressed GeoTIFF of synthetic imagery, written block row by block row (any size
    without the scene in memory): for tests and the benchmark.

    Values are ``_raster_values`` scaled to ``dtype`` (uint8 as is, uint16 x 40, float32 x 0.01). With
    ``nodata`` the file declares that value and ``nodata_box`` (top, left, bottom, right) holds it.
    ``noise`` > 0 adds seeded per-pixel noise of up to that many grey levels (uint8 only), so that tiles
    compress and decode as real imagery does rather than almost to nothing.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    scale = {"uint8": 1, "uint16": 40, "int16": 40, "float32": 0.01}[dtype]
    if noise and dtype != "uint8":
        raise ValueError(f"noise applies to uint8 rasters, not {dtype}")
    rng = np.random.default_rng(seed)
    transform = from_origin(origin[0], origin[1], pixel, pixel) if crs else None
    tiled = height >= tile and width >= tile
    options = dict(blockxsize=tile, blockysize=tile) if tiled else {}
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=bands, dtype=dtype, crs=crs,
                       transform=transform, nodata=nodata, tiled=tiled, compress="deflate", BIGTIFF="IF_SAFER",
                       **options) as dst:
        step = tile if tiled else height
        for top in range(0, height, step):
            rows = min(step, height - top)
            values = _raster_values(top, 0, rows, width, bands, seed)
            if noise:
                values = np.clip(values + rng.integers(-noise, noise + 1, values.shape), 0, 255)
            values = (values * scale).astype(dtype)
            if nodata_box is not None:
                y0, x0, y1, x1 = nodata_box
                r0, r1 = max(y0, top), min(y1, top + rows)
                if r1 > r0:
                    values[:, r0 - top:r1 - top, x0:x1] = nodata
            dst.write(values, window=Window(0, top, width, rows))
