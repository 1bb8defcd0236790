"""The refinement demo behind ``make demo-refine``: base stages, the refinement stage, and one table.

On the CPU demo's synthetic data (dataset/synthetic.py: fine, ragged class borders, a global view of a
quarter of the side) it trains the staged recipe as ``tools.demo`` does (global, pre, medium, all),
then the refinement stage on top of the full model (``--refine``, what train_refine.sh runs), and
scores held-out images three ways: the released merge (``sum``), the Hann-window merge (``hann``) and
the refined prediction (``refined``, on the ``sum`` merge), after rows for the other base stages. It
prints mIoU, Boundary IoU (3 px) and seam-band accuracy (8 px from a patch edge) of each, writes each
row's metrics JSON and a figure (image | ground truth | sum | refined, the patch grid drawn in white)
under ``--out``. The refinement is our design after the paper's description (docs/refinement.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

from dataset.classes import index_to_colour
from dataset.io import read_image, read_mask
from dataset.synthetic import generate
from models.modes import mode_spec
from option import report_error
from pipeline.grid import patch_starts
from tools.demo import SHORT_RUN, STAGES, add_scene_options, check_scene_options, run_step
from utils.errors import FCtLError
from utils.files import ensure_writable_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# global, pre, medium, all (tools.demo's "local" stage, the patch-only model trained as long as the context
# stages, is left out to keep the demo under 20 minutes; "pre" is the patch-only row, with fewer steps)
BASE = [stage for stage in STAGES if stage[0] != "local"]
ALL_WEIGHTS = ["--pre_path", "all.epoch.pth", "--c_path", "medium.epoch.pth", "--glo_path", "global.epoch.pth"]
ROWS = [("sum", ["--merge", "sum"]), ("hann", ["--merge", "hann"]),
        ("refined", ["--merge", "sum", "--refine_path", "refine.epoch.pth"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for data, checkpoints, logs, metrics and the figure "
                                                    "(default demo/refine_seed<SEED>)")
    parser.add_argument("--seed", type=int, default=0, help="data, initial weights and training order")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the pre, medium and all stages")
    parser.add_argument("--global_epochs", type=int, default=4, help="epochs of the global stage")
    parser.add_argument("--refine_epochs", type=int, default=4, help="epochs of the refinement stage")
    parser.add_argument("--train_images", type=int, default=224)
    parser.add_argument("--test_images", type=int, default=16, help="held-out images of the table")
    add_scene_options(parser)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--refine_lr", type=float, default=1e-3)
    parser.add_argument("--refine_crop", type=int, default=96)
    parser.add_argument("--refine_crops", type=int, default=4)
    parser.add_argument("--backbone", default="fpn_resnet18")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(ROOT, "demo", f"refine_seed{args.seed}")
    for name in ("epochs", "global_epochs", "refine_epochs", "train_images", "test_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    check_scene_options(parser, args)
    try:
        _demo(args)
    except FCtLError as error:
        return report_error(error, parser)
    return 0


def _figure(data: str, sum_masks: str, refined_masks: str, size_p: int, out: str, count: int = 4) -> None:
    """Rows of image | ground truth | sum | refined for the first ``count`` held-out images, the patch
    grid's edges drawn in white on the two predictions."""
    sat = os.path.join(data, "offical_crossvali", "Sat")
    ids = sorted(f.rsplit("_sat", 1)[0] for f in os.listdir(sat))[:count]
    rows = []
    for image_id in ids:
        image = read_image(os.path.join(sat, f"{image_id}_sat.png")).permute(1, 2, 0).numpy()
        height, width = image.shape[:2]
        truth = read_mask(os.path.join(data, "offical_crossvali", "Label", f"{image_id}_mask.png"), (height, width))
        panels = [image, index_to_colour(truth.numpy())]
        for folder in (sum_masks, refined_masks):
            mask = np.array(Image.open(os.path.join(folder, f"{image_id}_mask.png")).convert("RGB"))
            for start in patch_starts(height, size_p):
                mask[[start, min(start + size_p, height) - 1], :] = 255
            for start in patch_starts(width, size_p):
                mask[:, [start, min(start + size_p, width) - 1]] = 255
            panels.append(mask)
        gap = np.full((height, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for panel in panels for x in (panel, gap)][:-1], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def _demo(args: argparse.Namespace) -> None:
    data, models, logs = (os.path.join(args.out, name) for name in ("data", "models", "runs"))
    ensure_writable_dir(args.out, "out")
    generate(data, n_train=args.train_images, n_val=8, n_test=args.test_images, size=args.size, seed=args.seed,
             detail=args.detail)
    common = [sys.executable, "train_deep_globe.py", "--backbone", args.backbone, "--data_path", data,
              "--model_path", models, "--log_path", logs, "--size_p", str(args.size_p), "--size_g", str(args.size_g),
              "--device", "cpu", "--no_pretrained", "--seed", str(args.seed), "--num_workers", "0"]
    seconds = {}
    for task, mode, extra, _ in BASE:
        epochs = args.global_epochs if mode_spec(mode).whole_image else args.epochs
        seconds[task] = run_step(common + ["--task_name", task, "--mode", str(mode), "--train", "--epochs", str(epochs),
                                           "--lr", str(args.lr), "--batch_size", "1", "--sub_batch_size", "16"]
                                 + SHORT_RUN + extra)
    seconds["refine"] = run_step(common + ["--task_name", "refine", "--mode", "4", "--train", "--refine",
                                           "--epochs", str(args.refine_epochs), "--lr", str(args.refine_lr),
                                           "--weight_decay", "0", "--batch_size", "2", "--sub_batch_size", "16",
                                           "--refine_crop", str(args.refine_crop), "--refine_crops",
                                           str(args.refine_crops)] + ALL_WEIGHTS)
    scores = {}
    for task, mode, extra, _ in BASE[:-1]:  # the base stages but the full model, which is the ``sum`` row
        weights = ["--pre_path", f"{task}.epoch.pth"] + [x for pair in zip(extra[2::2], extra[3::2]) for x in pair]
        metrics = os.path.join(args.out, f"metrics_{task}.json")
        run_step(common + ["--task_name", task, "--mode", str(mode), "--evaluate", "--split", "test",
                           "--metrics_path", metrics, "--sub_batch_size", "16"] + weights)
        with open(metrics) as f:
            scores[task] = json.load(f)
    for row, extra in ROWS:
        metrics = os.path.join(args.out, f"metrics_{row}.json")
        run_step(common + ["--task_name", "all", "--mode", "4", "--evaluate", "--split", "test", "--metrics_path",
                           metrics, "--sub_batch_size", "16"] + ALL_WEIGHTS + extra)
        with open(metrics) as f:
            scores[row] = json.load(f)
    masks = {}
    for row, extra in (ROWS[0], ROWS[2]):
        masks[row] = os.path.join(args.out, f"masks_{row}")
        run_step(common + ["--task_name", "all", "--mode", "4", "--prediction_path", masks[row], "--no_tta",
                           "--sub_batch_size", "16"] + ALL_WEIGHTS + extra)
    figure = os.path.join(args.out, "figure.png")
    _figure(data, masks["sum"], masks["refined"], args.size_p, figure)

    print(f"\nRefinement demo (seed {args.seed}, {args.backbone}, {args.test_images} held-out {args.size} px images, "
          f"patches {args.size_p} px, no TTA; base stages {sum(seconds[t] for t, *_ in BASE):.0f} s, refinement "
          f"{seconds['refine']:.0f} s)")
    print(f"{'row':<10}{'mIoU':>8}{'boundary IoU':>14}{'seam acc':>10}{'off seam':>10}")
    for row in [task for task, *_ in BASE[:-1]] + [row for row, _ in ROWS]:
        s = scores[row]
        seam, off = (f"{100 * s[k]:>10.2f}" if s[k] is not None else f"{'n/a':>10}"
                     for k in ("seam_accuracy", "off_seam_accuracy"))
        print(f"{row:<10}{100 * s['miou']:>8.2f}{100 * s['mboundary_iou']:>14.2f}{seam}{off}")
    print(f"\nmetrics: {args.out}/metrics_<row>.json; figure (image | ground truth | sum | refined): {figure}")


if __name__ == "__main__":
    started = time.time()
    status = main()
    print(f"demo_refine took {time.time() - started:.0f} s", file=sys.stderr)
    sys.exit(status)
