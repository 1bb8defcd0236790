"""The Inria stage check behind ``make demo-inria``: synthetic tiles, the five Inria stage scripts chained
as a user chains them, each model evaluated, and the test script's predictions.

The stage scripts (``train_inria_pre.sh`` -> ``train_inria_B10.sh`` / ``train_inria_B15.sh`` ->
``train_inria_all.sh`` -> our ``train_inria_refine.sh`` -> ``test_inria.sh``) run unchanged; the options
given after them shrink the release's settings to a CPU run of a few minutes (small tiles and patches, the light ``fpn_resnet18``,
one epoch per stage at the end of a 2-epoch schedule). The synthetic tiles (dataset/synthetic_inria.py)
hold roofs that only the context windows tell apart from stone slabs, so the table shows whether the
context stages learn anything in so few steps; it is a check that the stages chain, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from dataset.synthetic_inria import MIN_SIZE, generate_inria
from option import report_error
from utils.errors import FCtLError
from utils.files import ensure_writable_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STAGES = [
    # (script, task, mode, weights for evaluation, label in the table)
    ("train_inria_pre.sh", "Bfcn", 1, ["--pre_path", "Bfcn.epoch.pth"], "patch only (mode 1)"),
    ("train_inria_B10.sh", "B10", 2, ["--pre_path", "B10.epoch.pth", "--context", "2"], "x2 window (mode 2)"),
    ("train_inria_B15.sh", "B15", 2, ["--pre_path", "B15.epoch.pth", "--context", "3"], "x3 window (mode 2)"),
    ("train_inria_all.sh", "all", 5, ["--pre_path", "all.epoch.pth", "--c_path", "B10.epoch.pth",
                                      "--c2_path", "B15.epoch.pth"], "x2 + x3 windows + self (mode 5)"),
    ("train_inria_refine.sh", "refine", 5, ["--pre_path", "all.epoch.pth", "--c_path", "B10.epoch.pth",
                                            "--c2_path", "B15.epoch.pth", "--refine_path", "refine.epoch.pth"],
     "mode 5 + refinement (ours)"),
]
# As in the DeepGlobe demo (tools/demo.py): in a few hundred steps, L2 inside Adam pulls fresh context
# modules back to zero and gates starting at 0 barely open, so neither is used here.
SHORT_RUN = ["--weight_decay", "0", "--gamma_init", "1"]


def run_step(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    started = time.time()
    code = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "LAUNCH": sys.executable}).returncode
    if code != 0:
        raise FCtLError(f"the Inria demo stopped: {os.path.basename(cmd[1])} exited with status {code} "
                        f"(its error line is above)")
    return time.time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "demo_inria"), help="folder for data, checkpoints, logs")
    parser.add_argument("--size", type=int, default=192, help="side of the synthetic tiles")
    parser.add_argument("--train_images", type=int, default=48)
    parser.add_argument("--val_images", type=int, default=8)
    parser.add_argument("--size_p", type=int, default=96, help="patch side (4 x 4 patches on a 192 px tile)")
    parser.add_argument("--lr", type=float, default=1e-3, help="higher than the release's 5e-5: few steps, no ImageNet")
    parser.add_argument("--backbone", default="fpn_resnet18")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("train_images", "val_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.size < MIN_SIZE:
        parser.error(f"--size must be at least {MIN_SIZE}")
    try:
        _demo(args)
    except FCtLError as error:
        return report_error(error, parser)
    return 0


def _demo(args: argparse.Namespace) -> None:
    data, models = os.path.join(args.out, "data"), os.path.join(args.out, "models")
    logs, predictions = os.path.join(args.out, "runs"), os.path.join(args.out, "predictions")
    ensure_writable_dir(args.out, "out")
    generate_inria(data, n_train=args.train_images, n_val=args.val_images, n_test=2, size=args.size, seed=args.seed)
    common = ["--backbone", args.backbone, "--data_path", data, "--model_path", models, "--log_path", logs,
              "--size_p", str(args.size_p), "--device", "cpu", "--no_pretrained", "--seed", str(args.seed),
              "--num_workers", "0", "--sub_batch_size", "16"]
    seconds, scores = {}, {}
    for script, task, _, _, _ in STAGES:
        seconds[task] = run_step(["bash", script, *common, "--epochs", "2", "--start_epoch", "1", "--batch_size", "2",
                              "--lr", str(args.lr), *SHORT_RUN])
    for _, task, mode, weights, _ in STAGES:
        metrics = os.path.join(logs, task, "metrics_crossvali.json")
        run_step([sys.executable, "train_deep_globe.py", "--dataset", "inria", "--task_name", task, "--mode", str(mode),
              "--evaluate", "--split", "crossvali", "--metrics_path", metrics, *common, *weights])
        with open(metrics) as f:
            scores[task] = json.load(f)
    run_step(["bash", "test_inria.sh", *common, "--prediction_path", predictions, "--no_tta"])
    print(f"\nFCtL Inria stages on synthetic tiles ({args.backbone}, 1 epoch per stage, patches {args.size_p}px, "
          f"validation split of {args.val_images} tiles, no TTA)")
    print(f"{'stage':<7}{'model':<34}{'building IoU':>13}{'F1':>7}{'accuracy':>10}{'train s':>9}")
    for _, task, _, _, label in STAGES:
        s = scores[task]
        print(f"{task:<7}{label:<34}{100 * s['miou']:>13.2f}{100 * s['f1']:>7.2f}{100 * s['accuracy']:>10.2f}"
              f"{seconds[task]:>9.0f}")
    print(f"\ntest masks (white buildings on black): {predictions}")


if __name__ == "__main__":
    sys.exit(main())
