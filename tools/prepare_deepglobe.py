"""Arrange the official DeepGlobe Land Cover download into the folders the training code reads.

    python -m tools.prepare_deepglobe --src /path/to/deepglobe/train --dst data

Input: the download folder with flat `<id>_sat.jpg` images and `<id>_mask.png` colour masks (the files
are also looked for in `<src>/train`, the layout of the Kaggle archive). Output, following the split lists
in data/splits (454 train / 207 crossvali / 142 test):
    <dst>/train/{Sat,Label}  <dst>/crossvali/{Sat,Label}  <dst>/offical_crossvali/{Sat,Label}
Images are hard-linked (no extra disk space), or copied where a hard link is impossible (another file
system) or --copy is given; they are never re-encoded. Masks are converted to class-index PNGs (mode 'L',
values 0..6), the format the original FCtL code expects. Test masks are converted when present but are
not required. Re-running is safe: up-to-date outputs are skipped and every file is written under a
temporary name and renamed into place. At the end it reports what is missing per split; it exits with
status 2 only when none of the listed images was found.
"""

from __future__ import annotations

import argparse
import filecmp
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from dataset.io import allow_large_images, image_size, read_image, read_mask, write_index_png
from dataset.split_layout import MASK_SUFFIX, SPLIT_DIRS, image_id
from option import report_error
from utils.errors import DataError, FCtLError
from utils.files import ensure_writable_dir

log = logging.getLogger("prepare_deepglobe")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPLITS_DIR = os.path.join(REPO, "data", "splits")
SPLITS = ("train", "crossvali", "test")
LABELS_REQUIRED = {"train": True, "crossvali": True, "test": False}
_SHOWN = 5


@dataclass
class SplitReport:
    """What happened to one split. Lists hold ids (or 'file: message' for bad files)."""

    split: str
    listed: int = 0
    images: dict[str, int] = field(default_factory=lambda: {"linked": 0, "copied": 0, "up to date": 0})
    masks: dict[str, int] = field(default_factory=lambda: {"converted": 0, "up to date": 0})
    missing_images: list[str] = field(default_factory=list)
    missing_masks: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return sum(self.images.values())


@dataclass
class PrepareReport:
    splits: list[SplitReport]
    link_failure: str | None = None

    @property
    def found(self) -> int:
        return sum(s.found for s in self.splits)


def read_split_list(path: str) -> list[str]:
    """Ids from a split list: one `<id>_sat.jpg` (or bare id) per line; blank lines and '#' lines skipped."""
    if not os.path.isfile(path):
        raise DataError(f"split list not found: {path}; pass --splits_dir with train.txt, crossvali.txt, test.txt")
    ids = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                ids.append(image_id(line) or line)
    return ids


def index_download(src: str) -> tuple[dict[str, str], dict[str, str]]:
    """(id -> image path, id -> mask path) for the files in `src` and `src/train`.

    An id found twice (in both folders, or as <id>_sat.jpg and <id>_sat.png) is a DataError unless the
    two files hold the same bytes: which one to use is the user's choice, never ours."""
    if not os.path.isdir(src):
        raise DataError(f"download folder not found: {src}; pass --src with the folder holding <id>_sat.jpg files")
    images: dict[str, str] = {}
    masks: dict[str, str] = {}
    conflicts: list[tuple[str, str]] = []
    for folder in (src, os.path.join(src, "train")):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            key = image_id(name)
            found = images if key is not None else masks if name.endswith(MASK_SUFFIX) else None
            if found is None:
                continue
            key = key if key is not None else name[: -len(MASK_SUFFIX)]
            path = os.path.join(folder, name)
            if key in found and not filecmp.cmp(found[key], path, shallow=False):
                conflicts.append((found[key], path))
            found.setdefault(key, path)
    if conflicts:
        first, second = conflicts[0]
        more = f" ({len(conflicts) - 1} more such pairs)" if len(conflicts) > 1 else ""
        raise DataError(f"two different files for one id in the download: {first} and {second}{more}; remove or "
                        f"rename one of each pair so that --src holds one image and one mask per id")
    return images, masks


def _up_to_date(source: str, target: str) -> bool:
    if not os.path.isfile(target) or os.path.getsize(target) == 0:
        return False
    return os.path.getmtime(target) >= os.path.getmtime(source)


def place_image(source: str, target: str, link: bool) -> tuple[str, str | None]:
    """Hard-link (or copy) `source` to `target` atomically. Returns (what was done, why a link failed)."""
    if os.path.exists(target):
        if os.path.samefile(source, target):
            return "up to date", None
        if os.path.getsize(target) == os.path.getsize(source) and _up_to_date(source, target):
            return "up to date", None
    tmp = f"{target}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    reason = None
    try:
        if link:
            try:
                os.link(source, tmp)
                os.replace(tmp, target)
                return "linked", None
            except OSError as error:
                reason = error.strerror or str(error)
                if os.path.lexists(tmp):
                    os.remove(tmp)
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except OSError as error:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise DataError(
            f"cannot write {target} ({error.strerror or error}); choose a writable --dst with free space"
        ) from None
    return "copied", reason


def prepare_split(
    split: str,
    ids: list[str],
    images: dict[str, str],
    masks: dict[str, str],
    dst: str,
    link: bool,
    verify: bool,
    progress: bool,
    image_name: Callable[[str, str], str] | None = None,
    read_label: Callable[[str, tuple[int, int]], object] = read_mask,
) -> tuple[SplitReport, str | None]:
    """Place one split's images and convert its masks. image_name(id, source) is the image's file name in
    Sat (default: the source's own name); read_label(path, (H, W)) returns the class indices (H, W) to write,
    raising DataError for a bad file (default: read_mask, DeepGlobe colour or index masks)."""
    report = SplitReport(split=split, listed=len(ids))
    sat_dir = ensure_writable_dir(os.path.join(dst, SPLIT_DIRS[split], "Sat"), "dst")
    label_dir = ensure_writable_dir(os.path.join(dst, SPLIT_DIRS[split], "Label"), "dst")
    link_failure = None
    for key in tqdm(ids, desc=f"{split:>9}", unit="img", disable=not progress):
        source = images.get(key)
        if source is None:
            report.missing_images.append(key)
            continue
        try:
            size = tuple(read_image(source).shape[1:]) if verify else image_size(source)
        except DataError as error:
            report.bad.append(str(error))
            continue
        name = image_name(key, source) if image_name else os.path.basename(source)
        done, reason = place_image(source, os.path.join(sat_dir, name), link)
        report.images[done] += 1
        link_failure = link_failure or reason
        mask = masks.get(key)
        if mask is None:
            report.missing_masks.append(key)
            continue
        target = os.path.join(label_dir, key + MASK_SUFFIX)
        if _up_to_date(mask, target):
            report.masks["up to date"] += 1
            continue
        try:
            write_index_png(target, read_label(mask, size))
        except DataError as error:
            report.bad.append(str(error))
            continue
        report.masks["converted"] += 1
    listed = set(ids)
    report.extra = sorted(key for name in os.listdir(sat_dir) if (key := image_id(name)) and key not in listed)
    return report, link_failure


def prepare(
    src: str,
    dst: str,
    splits_dir: str = DEFAULT_SPLITS_DIR,
    link: bool = True,
    verify: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Build `<dst>/{train,crossvali,offical_crossvali}/{Sat,Label}` from the download in `src`.

    splits_dir holds train.txt, crossvali.txt, test.txt. link: hard-link images (copy where impossible);
    False copies. verify: decode every image fully (finds truncated files; slower) instead of reading
    only its header. Raises DataError when none of the listed images exists in `src`.
    """
    lists = {split: read_split_list(os.path.join(splits_dir, f"{split}.txt")) for split in SPLITS}
    images, masks = index_download(src)
    if not any(key in images for ids in lists.values() for key in ids):
        total = sum(len(ids) for ids in lists.values())
        raise DataError(
            f"none of the {total} images listed in {splits_dir} is in {src} (looked for <id>_sat.jpg there and "
            f"in its train/ folder); pass --src with the folder of the official download"
        )
    ensure_writable_dir(dst, "dst")  # before any file is placed, not halfway through a split
    report = PrepareReport(splits=[])
    for split in SPLITS:
        split_report, failure = prepare_split(split, lists[split], images, masks, dst, link, verify, progress)
        report.splits.append(split_report)
        report.link_failure = report.link_failure or failure
    return report


def _some(ids: list[str]) -> str:
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return ", ".join(ids[:_SHOWN]) + more


def format_report(report: PrepareReport, dst: str) -> list[str]:
    """Human-readable summary lines, problems last."""
    lines = []
    for s in report.splits:
        images = ", ".join(f"{n} {what}" for what, n in s.images.items() if n)
        masks = ", ".join(f"{n} {what}" for what, n in s.masks.items() if n)
        lines.append(
            f"{s.split}: {s.listed} listed -> {os.path.join(dst, SPLIT_DIRS[s.split])}: images {s.found} "
            f"({images or 'none'}), masks {sum(s.masks.values())} ({masks or 'none'})"
        )
    if report.link_failure:
        lines.append(f"note: hard links were impossible ({report.link_failure}); those images were copied")
    for s in report.splits:
        if s.missing_images:
            lines.append(
                f"{s.split}: {len(s.missing_images)} images missing from the download: {_some(s.missing_images)}"
            )
        if s.missing_masks:
            if LABELS_REQUIRED[s.split]:
                lines.append(f"{s.split}: {len(s.missing_masks)} masks missing: {_some(s.missing_masks)}")
            else:
                lines.append(f"{s.split}: {len(s.missing_masks)} images have no mask (not needed for testing)")
        for message in s.bad:
            lines.append(f"{s.split}: skipped: {message}")
        if s.extra:
            lines.append(
                f"{s.split}: {len(s.extra)} images in {SPLIT_DIRS[s.split]}/Sat are not in the split list "
                f"(left in place; they will be used; remove them if the split changed): {_some(s.extra)}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="folder of the official download (<id>_sat.jpg, <id>_mask.png)")
    parser.add_argument("--dst", default="data", help="output data folder (default: data)")
    parser.add_argument(
        "--splits_dir", default=DEFAULT_SPLITS_DIR, help="folder with train.txt, crossvali.txt, test.txt"
    )
    return run_prepare(parser, argv, prepare)


def run_prepare(parser: argparse.ArgumentParser, argv: list[str] | None, prepare_fn) -> int:
    """The shared end of the prepare tools' command lines: the common options, the run, the report,
    and one ``error:`` line (exit status 2) for a user error."""
    parser.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    parser.add_argument("--verify", action="store_true", help="decode every image fully to find truncated files")
    parser.add_argument(
        "--allow_large_images", action="store_true", help="switch off Pillow's decompression-bomb limit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    allow_large_images(args.allow_large_images)
    try:
        report = prepare_fn(args.src, args.dst, args.splits_dir, link=not args.copy, verify=args.verify)
    except FCtLError as error:
        return report_error(error, parser)
    print("\n".join(format_report(report, args.dst)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
