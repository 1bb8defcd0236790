"""Arrange the official Inria Aerial Image Labeling download into the folders the training code reads.

    python -m tools.prepare_inria --src /path/to/AerialImageDataset --dst data_inria

Input: the download folder `AerialImageDataset` with `train/images/<city><n>.tif` (RGB, 5000 x 5000) and
`train/gt/<city><n>.tif` (one band: 0 = background, 255 = building). --src may also name the folder above
it or its train/ folder. Output, following the split lists in data/inria_splits (126 train / 27 crossvali /
27 test, all from the labelled training cities):
    <dst>/train/{Sat,Label}  <dst>/crossvali/{Sat,Label}  <dst>/offical_crossvali/{Sat,Label}
Images are hard-linked as `<city><n>_sat.tif` (no extra disk space), or copied where a hard link is
impossible (another file system) or --copy is given; they are never re-encoded. Ground truth is converted
to class-index PNGs `<city><n>_mask.png` (mode 'L', 0 = background, 1 = building); ground truth that is
already 0/1 is accepted, any other value is an error naming the file, and that image is left without a
mask. Test ground truth is converted when present but is not required. Re-running is safe: up-to-date
outputs are skipped and every file is written under a temporary name and renamed into place. At the end
it reports what is missing per split; it exits with status 2 only when none of the listed images was found.
"""

from __future__ import annotations

import argparse
import filecmp
import logging
import os
import sys

import numpy as np

from dataset.io import opened_image
from dataset.split_layout import IMAGE_SUFFIX
from tools.prepare_deepglobe import (
    SPLITS,
    PrepareReport,
    prepare_split,
    read_split_list,
    run_prepare,
)
from utils.errors import DataError
from utils.files import ensure_writable_dir

log = logging.getLogger("prepare_inria")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPLITS_DIR = os.path.join(REPO, "data", "inria_splits")
DOWNLOAD_DIR = "AerialImageDataset"
TIFF_EXTENSIONS = (".tif", ".tiff")
BUILDING = 255  # the building value of the official ground truth; 0 is background
_GT_MODES = ("1", "L", "I")  # one band; "I;16*" modes are accepted too


def find_train_folder(src: str) -> str:
    """The folder holding images/ and gt/: `src` itself, `src/train` or `src/AerialImageDataset/train`."""
    hint = f"pass --src with the {DOWNLOAD_DIR} folder of the official download"
    if not os.path.isdir(src):
        raise DataError(f"download folder not found: {src}; {hint}")
    candidates = [src, os.path.join(src, "train"), os.path.join(src, DOWNLOAD_DIR, "train")]
    for folder in candidates:
        if os.path.isdir(os.path.join(folder, "images")):
            return folder
    raise DataError(
        f"no images/ folder in {src}, {os.path.join(src, 'train')} or {os.path.join(src, DOWNLOAD_DIR, 'train')}; "
        f"{hint}"
    )


def _tiff_files(folder: str) -> dict[str, str]:
    """id -> path of the `<id>.tif` (or .tiff) files in `folder` (none when it is missing).

    An id found twice (<id>.tif and <id>.tiff) is a DataError unless the two files hold the same bytes."""
    found: dict[str, str] = {}
    if not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        key, ext = os.path.splitext(name)
        if ext.lower() not in TIFF_EXTENSIONS or not key:
            continue
        path = os.path.join(folder, name)
        if key in found and not filecmp.cmp(found[key], path, shallow=False):
            raise DataError(
                f"two different files for one id in the download: {found[key]} and {path}; remove or rename one"
            )
        found.setdefault(key, path)
    return found


def index_download(src: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(train folder, id -> image path, id -> ground-truth path) of the download at `src`."""
    train = find_train_folder(src)
    return train, _tiff_files(os.path.join(train, "images")), _tiff_files(os.path.join(train, "gt"))


def read_ground_truth(path: str, expected_hw: tuple[int, int]) -> np.ndarray:
    """Class indices (H, W) uint8 (0 = background, 1 = building) of an Inria ground-truth file.

    The file must have one band holding 0 and 255 (the official values) or 0 and 1, and the size
    `expected_hw` (H, W) of its image; anything else is a DataError naming the file."""
    with opened_image(path, "ground truth") as image:
        mode = image.mode
        if mode not in _GT_MODES and not mode.startswith("I;16"):
            raise DataError(
                f"ground truth {path} has pixel mode {mode}; expected one band (mode L) with 0 = background "
                f"and {BUILDING} = building"
            )
        values = np.array(image)
    if tuple(values.shape) != tuple(expected_hw):
        raise DataError(
            f"ground truth {path} is {values.shape[0]}x{values.shape[1]} (HxW) but its image is "
            f"{expected_hw[0]}x{expected_hw[1]}: the file belongs to another image or was resized"
        )
    if values.dtype == bool:
        return values.view(np.uint8)
    if values.size and (int(values.min()) < 0 or int(values.max()) > 255):
        raise DataError(
            f"ground truth {path} holds values up to {int(values.max())} (min {int(values.min())}); expected "
            f"0 = background and {BUILDING} = building (or 0 and 1)"
        )
    values = values.astype(np.uint8, copy=False)
    counts = np.bincount(values.ravel(), minlength=256)
    other = [v for v in np.flatnonzero(counts).tolist() if v not in (0, 1, BUILDING)]
    if other:
        listed = ", ".join(str(v) for v in other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        raise DataError(
            f"ground truth {path} holds value {listed} at {int(counts[other].sum())} pixels; expected "
            f"0 = background and {BUILDING} = building (or 0 and 1); replace the file"
        )
    if counts[1] and counts[BUILDING]:
        raise DataError(
            f"ground truth {path} holds both 1 ({int(counts[1])} pixels) and {BUILDING} ({int(counts[BUILDING])} "
            f"pixels); expected 0 and {BUILDING} (or 0 and 1), so which one marks buildings is unclear; replace the file"
        )
    if counts[BUILDING]:
        return np.equal(values, BUILDING).view(np.uint8)
    return values


def _image_name(key: str, source: str) -> str:
    """`<id>_sat.tif`: the name the training code looks for, with the source's own extension."""
    return key + IMAGE_SUFFIX + os.path.splitext(source)[1].lower()


def prepare(
    src: str,
    dst: str,
    splits_dir: str = DEFAULT_SPLITS_DIR,
    link: bool = True,
    verify: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Build `<dst>/{train,crossvali,offical_crossvali}/{Sat,Label}` from the Inria download in `src`.

    src: AerialImageDataset, the folder above it or its train/ folder. splits_dir holds train.txt,
    crossvali.txt, test.txt. link: hard-link images (copy where impossible); False copies. verify: decode
    every image fully (finds truncated files; slower) instead of reading only its header. Raises DataError
    when none of the listed images exists in the download.
    """
    lists = {split: read_split_list(os.path.join(splits_dir, f"{split}.txt")) for split in SPLITS}
    train, images, masks = index_download(src)
    if not any(key in images for ids in lists.values() for key in ids):
        total = sum(len(ids) for ids in lists.values())
        raise DataError(
            f"none of the {total} images listed in {splits_dir} is in {os.path.join(train, 'images')} (looked "
            f"for <city><n>.tif there); pass --src with the {DOWNLOAD_DIR} folder of the official download"
        )
    ensure_writable_dir(dst, "dst")  # before any file is placed, not halfway through a split
    report = PrepareReport(splits=[])
    for split in SPLITS:
        split_report, failure = prepare_split(
            split, lists[split], images, masks, dst, link, verify, progress,
            image_name=_image_name, read_label=read_ground_truth,
        )
        report.splits.append(split_report)
        report.link_failure = report.link_failure or failure
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--src", required=True, help=f"the {DOWNLOAD_DIR} folder of the official download (or its parent)"
    )
    parser.add_argument("--dst", default="data_inria", help="output data folder (default: data_inria)")
    parser.add_argument(
        "--splits", "--splits_dir", dest="splits_dir", default=DEFAULT_SPLITS_DIR,
        help="folder with train.txt, crossvali.txt, test.txt (default: data/inria_splits)",
    )
    return run_prepare(parser, argv, prepare)


if __name__ == "__main__":
    sys.exit(main())
