"""Evaluation on a labelled split and prediction of a test split.

Both iterate over the images this process owns (all of them, or every world_size-th under torchrun),
run the ``Predictor`` on the device and either accumulate counts (summed across processes at the end)
or write colour masks. Image decoding happens in DataLoader workers, so reading the next JPEG overlaps
with the network on the current one.

Scores. Besides the confusion matrix (IoU, F1, accuracy), an evaluation counts Boundary IoU
(``utils.metrics.BoundaryCounts``) and the pixel accuracy within ``SEAM_PX`` px of the lines where the
patches of the identity view's grid (``make_grid(H, W, size_p)``) start and end inside the image,
against the accuracy elsewhere. Whole-image models (mode 0) have no patch grid; their seam band is
that of ``size_p`` all the same, so that rows of different modes compare.

Memory. Predictions are consumed band by band (the counts are updated, or the PNG written, per band),
so no full-size prediction exists; Boundary IoU carries 2 x ``boundary_px`` rows between bands. The
loaders prefetch one image per worker (not torch's two) and do not pin: with N workers at most N + 1
images are in memory (the one being predicted and one being read by each worker), and a 1.2 GB scene
is not copied again into page-locked memory (the host-to-device copy of one image per several seconds
of work gains nothing from pinning).
"""

from __future__ import annotations

import json
import os
import time

import torch
from torch.utils.data import DataLoader, Subset

from dataset.classes import DEEPGLOBE, ClassTable
from dataset.io import PngBandWriter
from dataset.split_layout import item_bytes
from pipeline.grid import make_grid
from pipeline.predictor import Predictor
from utils.distributed import DistInfo, all_reduce_max, all_reduce_sum, shard
from utils.errors import DataError
from utils.files import atomic_write
from utils.logging import get_logger, peak_memory_mb, progress
from utils.metrics import BoundaryCounts, ConfusionMatrix, RegionAccuracy
from utils.workers import check_shared_memory, iterate, worker_init

log = get_logger("eval")

SEAM_PX = 8  # the seam band: pixels within this many px of a line where a patch starts or ends


def _loader(dataset, info: DistInfo, num_workers: int) -> DataLoader:
    """This process's images, one at a time (sizes may differ); ``None`` for a skipped bad image."""
    mine = Subset(dataset, shard(list(range(len(dataset))), info))
    extra = {"prefetch_factor": 1} if num_workers > 0 else {}
    check_shared_memory(num_workers, num_workers, item_bytes(dataset))
    return DataLoader(mine, batch_size=None, num_workers=num_workers, pin_memory=False, worker_init_fn=worker_init,
                      **extra)


def evaluate_dataset(predictor: Predictor, dataset, device: torch.device, info: DistInfo, *, tta: bool,
                     num_workers: int = 0, desc: str = "evaluate", want_sample: bool = False,
                     classes: ClassTable = DEEPGLOBE, boundary_px: int = 3):
    """Score ``dataset`` (labelled); returns (scores dict, optional first (image, label, prediction) sample).
    ``classes``: the table whose ``unscored`` class the means leave out (and whose unlabelled pixels no
    score counts); ``boundary_px``: the distance d of Boundary IoU.

    Scores: those of ``ConfusionMatrix.scores`` and ``BoundaryCounts.scores``, ``seam_accuracy`` and
    ``off_seam_accuracy`` (pixel accuracy inside and outside the seam band, None where it holds no
    pixel; see the module doc), ``seam_px`` and ``skipped``.

    Images the dataset skipped (``SplitDataset(skip_bad=True)`` yields None for them, with a warning) are
    counted in ``scores['skipped']``; when every image was skipped there is nothing to score and a
    DataError says so (on every process: the counts are summed first).
    """
    ignore = classes.ignore_index
    confusion = ConfusionMatrix(predictor.net.n_class, device, ignore)
    boundary = BoundaryCounts(predictor.net.n_class, boundary_px, device, ignore)
    seams = RegionAccuracy(device, ignore)
    sample = None
    skipped = torch.zeros(1, dtype=torch.int64, device=device)
    predictor.net.eval()
    loader = _loader(dataset, info, num_workers)
    with iterate(loader) as items:
        for item in progress(items, total=len(loader), enabled=info.is_main, desc=desc, unit="img"):
            if item is None:
                skipped += 1
                continue
            image = item["image"].to(device)
            label = item["label"].to(device)
            keep = want_sample and sample is None
            bands = []
            height, width = label.shape
            rows, columns = make_grid(height, width, predictor.cfg.size_p).seam_band(SEAM_PX, device)
            for y0, band in predictor.mask_bands(image, tta=tta):
                y1 = y0 + band.shape[0]
                confusion.update(band, label[y0:y1])
                boundary.update(band, label[y0:y1], top=y0, height=height)
                seams.update(band, label[y0:y1], rows[y0:y1, None] | columns)
                if keep:
                    bands.append(band.cpu())
            if keep:
                sample = (item["image"], item["label"], torch.cat(bands))
            del item, image, label  # the next image is not read into memory beside this one
    for counts in (confusion, boundary, seams):
        counts.all_reduce_()
    all_reduce_sum(skipped)
    _check_not_all_skipped(dataset, int(skipped.item()))
    scores = confusion.scores(classes.unscored)
    scores.update(boundary.scores(classes.unscored))
    scores["seam_accuracy"], scores["off_seam_accuracy"] = seams.accuracies()
    scores["seam_px"] = SEAM_PX
    scores["skipped"] = int(skipped.item())
    return scores, sample


def _check_not_all_skipped(dataset, skipped: int) -> None:
    total = len(dataset)
    if total and skipped == total:
        raise DataError(f"all {total} images of {_where(dataset)} were unreadable and skipped (`skip_bad_images`); "
                        f"nothing was scored or written: fix or replace the files listed in the warnings above")


def _where(dataset) -> str:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "root", "the split")


def format_scores(scores: dict, classes: ClassTable = DEEPGLOBE) -> str:
    """A plain-text table of ``evaluate_dataset``'s scores: per-class IoU, F1 and Boundary IoU, then
    mIoU, mean F1 and mean Boundary IoU (without the unscored class), pixel accuracy, and the accuracy
    inside and outside the seam band."""
    width = max(14, 2 + max(len(n) for n in classes.names))
    lines = [f"{'class':<{width}}{'IoU':>8}{'F1':>8}{'BIoU':>8}"]
    for name, iou, f1, biou in zip(classes.names, scores["iou"], scores["f1_per_class"], scores["boundary_iou"]):
        lines.append(f"{name:<{width}}{100 * iou:>8.2f}{100 * f1:>8.2f}{100 * biou:>8.2f}")
    left_out = "" if classes.unscored is None else f" (without {classes.names[classes.unscored]})"

    def percent(value: float | None) -> str:
        return f"{'n/a':>8}" if value is None else f"{100 * value:>8.2f}"

    lines.append(f"{'mIoU':<{width}}{percent(scores['miou'])}{left_out}")
    lines.append(f"{'F1':<{width}}{percent(scores['f1'])}")
    lines.append(f"{'mBIoU':<{width}}{percent(scores['mboundary_iou'])} (within {scores['boundary_px']} px of a "
                 f"class border)")
    lines.append(f"{'accuracy':<{width}}{percent(scores['accuracy'])}")
    lines.append(f"{'seam accuracy':<{width}}{percent(scores['seam_accuracy'])} (within {scores['seam_px']} px of "
                 f"a patch edge)")
    lines.append(f"{'off seam':<{width}}{percent(scores['off_seam_accuracy'])}")
    return "\n".join(lines)


def write_metrics(path: str, scores: dict) -> None:
    """Metrics JSON, written atomically (a failed write leaves any earlier file of that name as it was)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, lambda f: json.dump(scores, f, indent=2), mode="w")
    except OSError as exc:
        raise DataError(f"cannot write metrics file {path} ({exc.strerror or exc}); pass a writable `metrics_path` "
                        f"on a disk with free space") from None


def predict_dataset(predictor: Predictor, dataset, out_dir: str, device: torch.device, info: DistInfo, *,
                    tta: bool, num_workers: int = 0, classes: ClassTable = DEEPGLOBE) -> dict:
    """Write ``<out_dir>/<id>_mask.png`` (in the colours of ``classes``) for every image this process owns.

    Skipped images (see ``evaluate_dataset``) are counted in the summary's ``skipped``."""
    started = time.time()
    done = skipped = patches = 0
    predictor.net.eval()
    loader = _loader(dataset, info, num_workers)
    with iterate(loader) as items:
        for item in progress(items, total=len(loader), enabled=info.is_main, desc="predict", unit="img"):
            if item is None:
                skipped += 1
                continue
            image = item["image"].to(device)
            image_id = item["id"]
            del item
            height, width = image.shape[-2:]
            n = predictor.patches_per_image(height, width, tta)
            path = os.path.join(out_dir, f"{image_id}_mask.png")
            # Bands go to the PNG as soon as they are final: memory does not grow with the image height.
            with progress(total=n, enabled=info.is_main and n > 0, desc=image_id, unit="patch", leave=False) as inner, \
                    PngBandWriter(path, height, width, palette=classes.colours) as writer:
                for _, band in predictor.mask_bands(image, tta=tta, progress=inner):
                    writer.write(band.cpu().numpy())
            done += 1
            patches += n
            del image
    counts = all_reduce_sum(torch.tensor([done, skipped, patches], dtype=torch.int64, device=device))
    _check_not_all_skipped(dataset, int(counts[1]))
    # Under torchrun: images and patches summed over the processes; seconds and peak memory those of the
    # slowest and the largest process.
    worst = all_reduce_max(torch.tensor([time.time() - started, peak_memory_mb(device)], dtype=torch.float64,
                                        device=device))
    return {"images": int(counts[0]), "skipped": int(counts[1]), "patches": int(counts[2]),
            "seconds": float(worst[0]), "peak_memory_mb": float(worst[1])}
