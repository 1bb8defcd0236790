"""Evaluation on a labelled split and prediction of a test split.

Both iterate over the images this process owns (all of them, or every world_size-th under torchrun),
run the ``Predictor`` on the device and either accumulate a confusion matrix (summed across processes
at the end) or write colour masks. Image decoding happens in DataLoader workers, so reading the next
JPEG overlaps with the network on the current one.
"""

from __future__ import annotations

import json
import os
import time

import torch
from torch.utils.data import DataLoader, Subset

from dataset.classes import CLASS_NAMES
from dataset.io import write_mask_png
from utils.distributed import DistInfo, all_reduce_sum, shard
from utils.errors import DataError
from utils.files import atomic_write
from utils.inference import Predictor
from utils.logging import get_logger, peak_memory_mb, progress
from utils.metrics import ConfusionMatrix

log = get_logger("eval")


class _SkipBad(torch.utils.data.Dataset):
    """Wraps a dataset so that an unreadable image becomes ``None`` plus a warning instead of an error."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except DataError as exc:
            return {"error": str(exc)}


def _loader(dataset, info: DistInfo, num_workers: int, skip_bad: bool) -> DataLoader:
    mine = Subset(dataset, shard(list(range(len(dataset))), info))
    if skip_bad:
        mine = _SkipBad(mine)
    return DataLoader(mine, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())


def evaluate_dataset(predictor: Predictor, dataset, device: torch.device, info: DistInfo, *, tta: bool,
                     num_workers: int = 0, desc: str = "evaluate", skip_bad: bool = False,
                     want_sample: bool = False):
    """Score ``dataset`` (labelled); returns (scores dict, optional first (image, label, prediction) sample).

    With ``skip_bad`` an unreadable image is logged and counted in ``scores['skipped']``.
    """
    confusion = ConfusionMatrix(predictor.net.n_class, device)
    sample = None
    skipped = torch.zeros(1, dtype=torch.int64, device=device)
    predictor.net.eval()
    bar = progress(_loader(dataset, info, num_workers, skip_bad), enabled=info.is_main, desc=desc, unit="img")
    for item in bar:
        if "error" in item:
            log.warning(f"skipped: {item['error']}")
            skipped += 1
            continue
        image = item["image"].to(device, non_blocking=True)
        label = item["label"].to(device, non_blocking=True)
        pred = predictor.predict(image, tta=tta)
        confusion.update(pred, label)
        if want_sample and sample is None:
            sample = (item["image"], item["label"], pred.cpu())
    confusion.all_reduce_()
    all_reduce_sum(skipped)
    scores = confusion.scores()
    scores["skipped"] = int(skipped.item())
    return scores, sample


def format_scores(scores: dict) -> str:
    """A plain-text table: per-class IoU, then mIoU (classes 1..6), mean F1 and pixel accuracy."""
    lines = [f"{'class':<12}{'IoU':>8}"]
    for name, iou in zip(CLASS_NAMES, scores["iou"]):
        lines.append(f"{name:<12}{100 * iou:>8.2f}")
    lines.append(f"{'mIoU':<12}{100 * scores['miou']:>8.2f}   (classes 1..{len(CLASS_NAMES) - 1})")
    lines.append(f"{'F1':<12}{100 * scores['f1']:>8.2f}")
    lines.append(f"{'accuracy':<12}{100 * scores['accuracy']:>8.2f}")
    return "\n".join(lines)


def write_metrics(path: str, scores: dict) -> None:
    """Metrics JSON, written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: json.dump(scores, f, indent=2), mode="w")


def predict_dataset(predictor: Predictor, dataset, out_dir: str, device: torch.device, info: DistInfo, *,
                    tta: bool, num_workers: int = 0, skip_bad: bool = False) -> dict:
    """Write ``<out_dir>/<id>_mask.png`` (DeepGlobe colours) for every image this process owns."""
    started = time.time()
    done = skipped = patches = 0
    predictor.net.eval()
    bar = progress(_loader(dataset, info, num_workers, skip_bad), enabled=info.is_main, desc="predict", unit="img")
    for item in bar:
        if "error" in item:
            log.warning(f"skipped: {item['error']}")
            skipped += 1
            continue
        image = item["image"].to(device, non_blocking=True)
        n = predictor.patches_per_image(*image.shape[-2:], tta)
        with progress(total=n, enabled=info.is_main and n > 0, desc=item["id"], unit="patch", leave=False) as inner:
            pred = predictor.predict(image, tta=tta, progress=inner)
        write_mask_png(os.path.join(out_dir, f"{item['id']}_mask.png"), pred.cpu().numpy())
        done += 1
        patches += n
    counts = all_reduce_sum(torch.tensor([done, skipped, patches], dtype=torch.int64, device=device))
    return {"images": int(counts[0]), "skipped": int(counts[1]), "patches": int(counts[2]),
            "seconds": time.time() - started, "peak_memory_mb": peak_memory_mb(device)}
