"""A data split as laid out on disk by python -m tools.prepare_deepglobe (or tools.prepare_inria): the
DeepGlobe layout, which the Inria release and datasets of your own share, with the split's class table.

Layout: `<data_path>/<dir>/Sat/<id>_sat.{jpg,jpeg,png,tif,tiff}` and `<data_path>/<dir>/Label/<id>_mask.png`
(or `<id>_mask.tif`, as tools.prepare_scenes writes them),
with <dir> from SPLIT_DIRS ("offical_crossvali" is the original code's spelling and is kept so that its
data folders work unchanged). The folder contents define a split at run time; the lists in data/splits/
are only used by the prepare tool.

Items are listed (and, when labelled, checked for masks) when the data set is built, so a missing folder or
mask stops the run before any training; pixels are read lazily in `__getitem__`, i.e. in DataLoader workers.
An item is `{"id": str, "image": uint8 (3, H, W), "label": uint8 (H, W) or None, "path": str}` (the image
has `bands` bands for a data set of more: see dataset/prepared.py).

Bad files (`skip_bad`). By default an unreadable image or mask raises DataError, which stops the run. With
`skip_bad=True`:
  - at construction, images without a mask are left out with one warning (instead of an error);
  - `__getitem__` logs a warning with the DataError's message and returns None for an unreadable item.
`collate_list` drops the None items and reports how many it dropped in `batch["skipped"]` (an int; the
other keys are lists of equal length, possibly empty), so the caller can count skipped images and must
handle an empty batch.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch.utils.data import Dataset, Subset

from dataset.classes import DEEPGLOBE, ClassTable
from dataset.io import image_size, read_image, read_mask
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLIT_DIRS: dict[str, str] = {"train": "train", "crossvali": "crossvali", "test": "offical_crossvali"}
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
IMAGE_SUFFIX = "_sat"
MASK_SUFFIX = "_mask.png"
MASK_SUFFIXES = (MASK_SUFFIX, "_mask.tif")  # a PNG, or the georeferenced GeoTIFF of tools.prepare_scenes
_SHOWN = 5

Item = dict[str, Any]


def split_folder(split: str) -> str:
    """Folder name of a split; accepts the split names and the folder names themselves."""
    if split in SPLIT_DIRS:
        return SPLIT_DIRS[split]
    if split in SPLIT_DIRS.values():
        return split
    choices = ", ".join(list(SPLIT_DIRS) + [d for d in SPLIT_DIRS.values() if d not in SPLIT_DIRS])
    raise ConfigError(f"unknown split '{split}'; choose one of: {choices}")


def image_id(filename: str) -> str | None:
    """`<id>` of an `<id>_sat.<ext>` file name (extension case ignored), or None for other names."""
    stem, ext = os.path.splitext(os.path.basename(filename))
    if ext.lower() not in IMAGE_EXTENSIONS or not stem.endswith(IMAGE_SUFFIX) or stem == IMAGE_SUFFIX:
        return None
    return stem[: -len(IMAGE_SUFFIX)]


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def list_images(sat_dir: str) -> dict[str, str]:
    """Map id -> image path for every `<id>_sat.<ext>` file in `sat_dir`, sorted by id."""
    hint = "run python -m tools.prepare_deepglobe (or python -m tools.make_synthetic) or pass `data_path`"
    if not os.path.isdir(sat_dir):
        raise DataError(f"image folder not found: {sat_dir}; {hint}")
    found: dict[str, str] = {}
    others: list[str] = []
    for name in sorted(os.listdir(sat_dir)):
        key = image_id(name)
        if key is None:
            others.append(name)
        elif key in found:
            raise DataError(
                f"two images for id '{key}' in {sat_dir}: {os.path.basename(found[key])} and {name}; keep one"
            )
        else:
            found[key] = os.path.join(sat_dir, name)
    if not found:
        extra = f" (it holds {len(others)} other files, e.g. {others[0]})" if others else " (it is empty)"
        raise DataError(f"no <id>_sat.{{jpg,png,tif}} images in {sat_dir}{extra}; {hint}")
    return dict(sorted(found.items()))


class SplitDataset(Dataset):
    """One split of a DeepGlobe-layout folder; see the module docstring for items and `skip_bad`.

    data_path: the folder holding train/, crossvali/, offical_crossvali/. split: "train", "crossvali",
    "test" or a folder name. labelled: also read `Label/<id>_mask.png` (checked to exist now).
    ids: keep only these ids, in this order (a trailing `_sat.<ext>` is stripped, so split-list lines work).
    classes: the class table the masks are read with (DeepGlobe's by default).
    """

    def __init__(
        self,
        data_path: str,
        split: str,
        labelled: bool,
        ids: list[str] | None = None,
        skip_bad: bool = False,
        classes: ClassTable = DEEPGLOBE,
        bands: int = 3,
    ) -> None:
        self.split = split
        self.bands = bands  # images are read as RGB (3), or as their first `bands` bands
        self.classes = classes
        self.labelled = labelled
        self.skip_bad = skip_bad
        self.root = os.path.join(data_path, split_folder(split))
        if not os.path.isdir(data_path):
            raise DataError(
                f"data folder not found: {data_path}; run python -m tools.prepare_deepglobe "
                f"(or python -m tools.make_synthetic) or pass `data_path`"
            )
        images = list_images(os.path.join(self.root, "Sat"))
        if ids is not None:
            wanted = [image_id(i) or i for i in ids]
            absent = [i for i in wanted if i not in images]
            if absent:
                raise DataError(
                    f"{len(absent)} requested ids have no image in {os.path.join(self.root, 'Sat')}: {_shown(absent)}"
                )
            images = {i: images[i] for i in wanted}
        self._masks: dict[str, str] = {}  # id -> its mask file, when labelled
        if labelled:
            images = self._drop_unlabelled(images)
        self.ids: list[str] = list(images)
        self.image_paths: list[str] = list(images.values())

    def _drop_unlabelled(self, images: dict[str, str]) -> dict[str, str]:
        label_dir = os.path.join(self.root, "Label")
        present = set(os.listdir(label_dir)) if os.path.isdir(label_dir) else set()
        self._masks = {i: os.path.join(label_dir, i + suffix) for i in images for suffix in MASK_SUFFIXES[::-1]
                       if i + suffix in present}
        missing = [i for i in images if i not in self._masks]
        if not missing:
            return images
        message = (
            f"{len(missing)} of {len(images)} images in {os.path.join(self.root, 'Sat')} have no mask "
            f"<id>{MASK_SUFFIX} in {label_dir} (first: {_shown(missing)})"
        )
        if not self.skip_bad or len(missing) == len(images):
            raise DataError(f"{message}; run python -m tools.prepare_deepglobe again or remove those images")
        log.warning("%s; leaving them out", message)
        missing_set = set(missing)
        return {i: p for i, p in images.items() if i not in missing_set}

    def label_path(self, index: int) -> str:
        """Path of item `index`'s mask (whether or not the set is labelled): its ``<id>_mask.png``, or its
        ``<id>_mask.tif`` when only that one exists."""
        found = self._masks.get(self.ids[index])
        return found or os.path.join(self.root, "Label", self.ids[index] + MASK_SUFFIX)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Item | None:
        path = self.image_paths[index]
        try:
            image = read_image(path, self.bands)
            label = read_mask(self.label_path(index), tuple(image.shape[1:]), self.classes) if self.labelled else None
        except DataError as error:
            if not self.skip_bad:
                raise
            log.warning("skipping %s: %s", self.ids[index], error)
            return None
        return {"id": self.ids[index], "image": image, "label": label, "path": path}


def collate_list(batch: list[Item | None]) -> dict[str, Any]:
    """Keep items as lists (images differ in size): {"id": [...], "image": [...], "label": [...],
    "path": [...], "skipped": int}. None items (unreadable with skip_bad) are dropped and counted."""
    items = [item for item in batch if item is not None]
    out: dict[str, Any] = {key: [item[key] for item in items] for key in ("id", "image", "label", "path")}
    out["skipped"] = len(batch) - len(items)
    return out


def item_bytes(dataset: Dataset) -> int:
    """Bytes of one item (uint8 image and label) judged by the first image's header: what a DataLoader
    worker hands over through shared memory per image (0 for an empty or unknown data set)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    paths = getattr(dataset, "image_paths", [])
    if not paths:
        return 0
    try:
        height, width = image_size(paths[0])
    except DataError:
        return 0  # the read itself reports the file
    return (3 + int(getattr(dataset, "labelled", False))) * height * width


def first_images(dataset: Dataset, max_images: int | None) -> Dataset:
    """The first ``max_images`` items of ``dataset`` (all of them when None): the --max_images option."""
    if max_images is None:
        return dataset
    return Subset(dataset, range(min(max_images, len(dataset))))
