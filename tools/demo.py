"""The CPU demo behind ``make demo``: synthetic data, the staged FCtL recipe, evaluation, a figure.

It runs exactly what a user runs — ``train_deep_globe.py``, stage by stage as the stage scripts chain
them, with settings for a run of a few hundred steps (``SHORT_RUN``, higher lr, more global epochs) — on
a small synthetic dataset whose classes can only be told apart with context and whose class borders are
fine and ragged (dataset/synthetic.py, ``detail``), with the light ``fpn_resnet18`` backbone and a global
view of a quarter of the image's side, and prints one table: the global-only model (mode 0), which sees
the scene but not its borders, and the patch-only model (mode 1), which sees the borders but not the
scene, against the medium-context (mode 2) and full (mode 4) models, with the seconds each stage took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from dataset.classes import index_to_colour
from dataset.io import read_image, read_mask
from dataset.synthetic import AGRICULTURE, MIN_SIZE, RANGELAND, generate
from models.modes import mode_spec
from option import report_error
from utils.errors import FCtLError
from utils.files import ensure_writable_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STAGES = [
    # (task, mode, extra options, label in the table)
    ("global", 0, [], "global image only (mode 0)"),
    ("pre", 1, [], "patch only, no context (mode 1)"),
    # The fair baseline: the context stages continue from "pre", so the patch-only model gets as many
    # steps as they have in all.
    ("local", 1, ["--pre_path", "pre.epoch.pth"], "patch only, trained as long (mode 1)"),
    ("medium", 2, ["--pre_path", "pre.epoch.pth"], "patch + medium context (mode 2)"),
    ("all", 4, ["--pre_path", "pre.epoch.pth", "--c_path", "medium.epoch.pth", "--glo_path", "global.epoch.pth"],
     "patch + medium + large context (mode 4)"),
]
# Training options of every stage besides the paper's. In a run of a few hundred Adam steps:
#  - no weight decay: with L2 inside Adam, a weight whose gradient is still small (a fresh context
#    module) is pulled to zero by about one learning rate per step, whatever the decay's size; with the
#    paper's 5e-4 the context stages gained nothing over the patch-only model (README, "The CPU demo");
#  - correlation gates starting at 1 instead of 0 (they affect only the fresh context modules): Adam opens
#    a gate by about one learning rate per step, so from 0 it would reach only about 0.2 here.
SHORT_RUN = ["--weight_decay", "0", "--gamma_init", "1"]


def run_step(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    started = time.time()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code != 0:
        raise FCtLError(f"the demo stopped: {os.path.basename(cmd[1])} exited with status {code} "
                        f"(its error line is above)")
    return time.time() - started


def _figure(data: str, predictions: str, out: str, count: int = 4) -> None:
    """Rows of image | ground truth | prediction for the first ``count`` test images."""
    sat = os.path.join(data, "offical_crossvali", "Sat")
    ids = sorted(f.rsplit("_sat", 1)[0] for f in os.listdir(sat))[:count]
    rows = []
    for image_id in ids:
        image = read_image(os.path.join(sat, f"{image_id}_sat.png")).permute(1, 2, 0).numpy()
        truth = read_mask(os.path.join(data, "offical_crossvali", "Label", f"{image_id}_mask.png"), image.shape[:2])
        pred = np.asarray(Image.open(os.path.join(predictions, f"{image_id}_mask.png")).convert("RGB"))
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([image, gap, index_to_colour(truth.numpy()), gap, pred], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def add_scene_options(parser: argparse.ArgumentParser) -> None:
    """The options of the synthetic scenes and the views the demos train on (``check_scene_options``)."""
    parser.add_argument("--size", type=int, default=200, help="side of the synthetic images")
    parser.add_argument("--size_p", type=int, default=100, help="patch side (3 x 3 patches on a 200 px image)")
    parser.add_argument("--size_g", type=int, default=50,
                        help="side of the global view: a quarter of the image's, so that it loses the borders' detail")
    parser.add_argument("--detail", type=float, default=0.5,
                        help="fine, ragged class borders in the synthetic scenes (dataset/synthetic.py; 0: none)")


def check_scene_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (``parser.error``) for scene options the generator cannot make."""
    if args.size < MIN_SIZE:
        parser.error(f"--size must be at least {MIN_SIZE}")
    if not args.detail >= 0:
        parser.error("--detail must be 0 or more")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "demo"), help="folder for data, checkpoints, logs")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every stage but the global one")
    parser.add_argument("--global_epochs", type=int, default=4,
                        help="epochs of the global stage: its head features are the large context, and after one "
                             "epoch they barely tell the scene types apart (README)")
    parser.add_argument("--train_images", type=int, default=224,
                        help="many scenes seen once rather than few seen often: with 32 scenes the models "
                             "memorised them instead of learning the scene rule")
    parser.add_argument("--val_images", type=int, default=16)
    add_scene_options(parser)
    parser.add_argument("--lr", type=float, default=1e-3, help="higher than the paper's 5e-5: few steps, no ImageNet")
    parser.add_argument("--backbone", default="fpn_resnet18")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("epochs", "global_epochs", "train_images", "val_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    check_scene_options(parser, args)
    try:
        _demo(args)
    except FCtLError as error:
        return report_error(error, parser)
    return 0


def _demo(args: argparse.Namespace) -> None:
    """Data, the four stages, their evaluation, the test prediction, the figure and the table."""

    data = os.path.join(args.out, "data")
    models = os.path.join(args.out, "models")
    logs = os.path.join(args.out, "runs")
    predictions = os.path.join(args.out, "predictions")
    ensure_writable_dir(args.out, "out")
    # Always (about a second): deterministic, and it drops the surplus of an earlier, larger run.
    generate(data, n_train=args.train_images, n_val=args.val_images, n_test=4, size=args.size, seed=args.seed,
             detail=args.detail)
    common = [sys.executable, "train_deep_globe.py", "--backbone", args.backbone, "--data_path", data,
              "--model_path", models, "--log_path", logs, "--size_p", str(args.size_p), "--size_g", str(args.size_g),
              "--device", "cpu", "--no_pretrained", "--seed", str(args.seed)]
    seconds, scores = {}, {}
    for task, mode, extra, _ in STAGES:
        epochs = args.global_epochs if mode_spec(mode).whole_image else args.epochs
        seconds[task] = run_step(common + ["--task_name", task, "--mode", str(mode), "--train", "--epochs", str(epochs),
                                       "--lr", str(args.lr), "--batch_size", "1", "--sub_batch_size", "16",
                                       "--num_workers", "0"] + SHORT_RUN + extra)
    for task, mode, extra, _ in STAGES:
        weights = ["--pre_path", f"{task}.epoch.pth"] + [x for pair in zip(extra[2::2], extra[3::2]) for x in pair]
        metrics = os.path.join(logs, task, "metrics_crossvali.json")
        run_step(common + ["--task_name", task, "--mode", str(mode), "--evaluate", "--split", "crossvali",
                       "--metrics_path", metrics, "--sub_batch_size", "16", "--num_workers", "0"] + weights)
        with open(metrics) as f:
            scores[task] = json.load(f)
    run_step(common + ["--task_name", "all", "--mode", "4", "--prediction_path", predictions, "--sub_batch_size", "16",
                   "--num_workers", "0", "--pre_path", "all.epoch.pth", "--c_path", "medium.epoch.pth",
                   "--glo_path", "global.epoch.pth"])
    figure = os.path.join(args.out, "figure.png")
    _figure(data, predictions, figure)

    def count(n: int) -> str:
        return f"{n} epoch{'s' if n != 1 else ''}"
    print(f"\nFCtL demo on synthetic data ({args.backbone}, {count(args.epochs)} per stage, "
          f"{count(args.global_epochs)} for global, patches {args.size_p}px, validation split of "
          f"{args.val_images} images, no TTA)")
    # Agriculture and rangeland share one texture; only context tells them apart (dataset/synthetic.py).
    # Boundary IoU (3 px): how well the borders are drawn, which a shrunken global view cannot do.
    print(f"{'stage':<8}{'model':<42}{'mIoU':>7}{'accuracy':>10}{'agri IoU':>10}{'range IoU':>11}"
          f"{'boundary IoU':>14}{'train s':>9}")
    for task, _, _, label in STAGES:
        s = scores[task]
        print(f"{task:<8}{label:<42}{100 * s['miou']:>7.2f}{100 * s['accuracy']:>10.2f}"
              f"{100 * s['iou'][AGRICULTURE]:>10.2f}{100 * s['iou'][RANGELAND]:>11.2f}"
              f"{100 * s['mboundary_iou']:>14.2f}{seconds[task]:>9.0f}")
    print(f"\nfigure (image | ground truth | prediction of mode 4 with TTA): {figure}")


if __name__ == "__main__":
    sys.exit(main())
