"""A seeded generator of small Inria-format tiles (building / background) in which context decides the label.

Purpose: a data set on which the Inria stages (modes 1, 2 and 5) train and chain on a CPU in minutes,
and on which the context windows carry information the patch lacks.

Layout written (as python -m tools.prepare_inria writes the real data set):
  <out>/train/{Sat,Label}, <out>/crossvali/{Sat,Label}, <out>/offical_crossvali/{Sat,Label}
with `<id>_sat.tif` RGB images (uncompressed TIFF, like Inria's) and `<id>_mask.png` 0/1 class-index
masks ('L'); the test split gets labels too. Ids are `train0000`, `crossvali0000`, `test0000`, ...;
tile i of a split depends only on (seed, split, i, size).

Tile design: the same mottled ground everywhere, and bright rectangles of one roof texture (random
grey or brick brightness, a darker rim) scattered over it. A tile is a "town" or a "quarry" tile
(alternating within a split). In a town the rectangles are buildings (class 1) and one straight
dark road crosses the tile (across or down, somewhere in its middle 60%); in a quarry the same
rectangles are stone slabs, labelled background (0), and there is no road. A patch away from the road
therefore cannot tell a roof from a slab (with patches half the tile's side, about half of a town's
patches miss the road), while its x2 and x3 windows show the road.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from dataset.io import write_index_png
from dataset.synthetic import fractal_noise, write_splits
from utils.errors import DataError
from utils.files import atomic_open

MIN_SIZE = 64
BUILDING = 1


def _road(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bool (size, size): one straight road, 3-5% of the side wide, across or down the tile."""
    road = np.zeros((size, size), dtype=bool)
    width = max(2, int(size * rng.uniform(0.03, 0.05)))
    centre = int(rng.uniform(0.2, 0.8) * size)
    lo, hi = max(0, centre - width // 2), min(size, centre + (width + 1) // 2)
    if rng.random() < 0.5:
        road[lo:hi, :] = True
    else:
        road[:, lo:hi] = True
    return road


def _rectangles(rng: np.random.Generator, size: int, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask bool (size, size), roof brightness float32 (size, size)) of rectangles placed on ``free``
    ground, about 15% of the tile."""
    mask = np.zeros((size, size), dtype=bool)
    roof = np.zeros((size, size), dtype=np.float32)
    target = 0.15 * size * size
    smallest, largest = max(4, size // 40), max(6, size // 12)
    for _ in range(4000):
        if mask.sum() >= target:
            break
        h, w = (int(v) for v in rng.integers(smallest, largest + 1, size=2))
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        box = (slice(top, top + h), slice(left, left + w))
        if not free[box].all() or mask[max(0, top - 2):top + h + 2, max(0, left - 2):left + w + 2].any():
            continue
        mask[box] = True
        roof[box] = rng.uniform(0.55, 0.95)
    return mask, roof


def make_tile(rng: np.random.Generator, size: int, town: bool) -> tuple[np.ndarray, np.ndarray]:
    """One tile: (image uint8 (size, size, 3), label uint8 (size, size) of 0/1)."""
    ground = fractal_noise(rng, 1, size, 3, 4)[0]
    roads = _road(rng, size) if town else np.zeros((size, size), dtype=bool)
    rects, roof = _rectangles(rng, size, ~roads)
    image = np.empty((size, size, 3), dtype=np.float32)
    for channel, (base, amount) in enumerate(((0.42, 0.08), (0.45, 0.09), (0.33, 0.06))):
        image[..., channel] = base + amount * ground
    image[roads] = (0.18, 0.18, 0.2)
    brick = rng.random() < 0.5
    tint = np.array((1.0, 0.75, 0.65) if brick else (1.0, 1.0, 1.0), dtype=np.float32)
    image[rects] = roof[rects, None] * tint
    rim = rects & ~(np.roll(rects, 1, 0) & np.roll(rects, -1, 0) & np.roll(rects, 1, 1) & np.roll(rects, -1, 1))
    image[rim] *= 0.7
    image *= rng.uniform(0.9, 1.1)
    image += rng.normal(0.0, 0.02, size=image.shape).astype(np.float32)
    label = (rects & town).astype(np.uint8) * BUILDING
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), label


def is_town(seed: int, split: str, index: int) -> bool:
    """Tile type: alternating within a split, phase set by the seed."""
    return (index + seed) % 2 == 0


def write_tiff(path: str, rgb: np.ndarray) -> None:
    """An uncompressed RGB TIFF, written under a temporary name and renamed into place."""
    try:
        with atomic_open(path) as handle:
            Image.fromarray(rgb).save(handle, format="TIFF")
    except OSError as error:
        raise DataError(f"cannot write {path} ({error.strerror or error}); choose a writable folder with "
                        f"free space") from None


def _remove_stale(folder: str, split: str, keep: set[str]) -> None:
    for name in os.listdir(folder):
        stem = name.split("_", 1)[0]
        if stem.startswith(split) and stem[len(split):].isdigit() and stem not in keep \
                and name.endswith(("_sat.tif", "_mask.png")):
            os.remove(os.path.join(folder, name))


def generate_inria(out_dir: str, n_train: int, n_val: int, n_test: int, size: int,
                   seed: int) -> dict[str, list[str]]:
    """Write a synthetic Inria-format data set under ``out_dir``; returns the ids per split.
    Deterministic: the same arguments give byte-identical files."""
    if size < MIN_SIZE:
        raise ValueError(f"synthetic Inria tiles need size >= {MIN_SIZE}")
    def write(root: str, name: str, rng: np.random.Generator, town: bool) -> None:
        image, label = make_tile(rng, size, town)
        write_tiff(os.path.join(root, "Sat", f"{name}_sat.tif"), image)
        write_index_png(os.path.join(root, "Label", f"{name}_mask.png"), label, n_class=2)

    return write_splits(out_dir, (n_train, n_val, n_test), seed, write, _remove_stale, is_town)
