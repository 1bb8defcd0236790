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
from dataset.io import PngBandWriter
from utils.distributed import DistInfo, all_reduce_sum, shard
from utils.files import atomic_write
from utils.inference import Predictor
from utils.logging import get_logger, peak_memory_mb, progress
from utils.metrics import ConfusionMatrix

log = get_logger("eval")


def _loader(dataset, info: DistInfo, num_workers: int) -> DataLoader:
    """This process's images, one at a time (sizes may differ); ``None`` for a skipped bad image."""
    mine = Subset(dataset, shard(list(range(len(dataset))), info))
    return DataLoader(mine, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())


def evaluate_dataset(predictor: Predictor, dataset, device: torch.device, info: DistInfo, *, tta: bool,
                     num_workers: int = 0, desc: str = "evaluate", want_sample: bool = False):
    """Score ``dataset`` (labelled); returns (scores dict, optional first (image, label, prediction) sample).

    Images the dataset skipped (``DeepGlobe(skip_bad=True)`` yields None for them, with a warning) are
    counted in ``scores['skipped']``.
    """
    confusion = ConfusionMatrix(predictor.net.n_class, device)
    sample = None
    skipped = torch.zeros(1, dtype=torch.int64, device=device)
    predictor.net.eval()
    bar = progress(_loader(dataset, info, num_workers), enabled=info.is_main, desc=desc, unit="img")
    for item in bar:
        if item is None:
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
                    tta: bool, num_workers: int = 0) -> dict:
    """Write ``<out_dir>/<id>_mask.png`` (DeepGlobe colours) for every image this process owns."""
    started = time.time()
    done = skipped = patches = 0
    predictor.net.eval()
    bar = progress(_loader(dataset, info, num_workers), enabled=info.is_main, desc="predict", unit="img")
    for item in bar:
        if item is None:
            skipped += 1
            continue
        image = item["image"].to(device, non_blocking=True)
        height, width = image.shape[-2:]
        n = predictor.patches_per_image(height, width, tta)
        path = os.path.join(out_dir, f"{item['id']}_mask.png")
        # Bands go to the PNG as soon as they are final: memory does not grow with the image height.
        with progress(total=n, enabled=info.is_main and n > 0, desc=item["id"], unit="patch", leave=False) as inner, \
                PngBandWriter(path, height, width) as writer:
            for _, band in predictor.mask_bands(image, tta=tta, progress=inner):
                writer.write(band.cpu().numpy())
        done += 1
        patches += n
    counts = all_reduce_sum(torch.tensor([done, skipped, patches], dtype=torch.int64, device=device))
    return {"images": int(counts[0]), "skipped": int(counts[1]), "patches": int(counts[2]),
            "seconds": time.time() - started, "peak_memory_mb": peak_memory_mb(device)}
