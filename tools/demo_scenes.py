"""The own-scenes demo: prepare georeferenced 4-band scenes with vector and raster labels, train the stages
on R, G, B and on R, G, B + near-infrared, predict the held-out scene, and compare.

    python -m tools.demo_scenes --seed 0          # or: make demo-scenes SEED=0

It runs what a user runs: ``tools.prepare_scenes`` (split by scene: one scene held out for the test),
then ``train_deep_globe.py`` stage by stage (global, pre, medium, all; ``fpn_resnet18``), then
``--input`` on the held-out scene. The scenes (dataset/synthetic_scenes.py) hold two classes, ``crop``
and ``sheet``, that look the same in R, G and B and differ only in the near-infrared band, so a model of
three bands cannot tell them apart. The table gives, per variant, the mIoU on the whole held-out scene
(against the generator's truth, every pixel), each class's IoU, and the seconds of the stages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dataset.classes import load_class_table
from dataset.synthetic_scenes import make_scenes
from option import report_error
from tools import prepare_scenes
from tools.demo import SHORT_RUN, run_step
from utils.errors import FCtLError
from utils.files import ensure_writable_dir
from utils.labels import IGNORE_INDEX
from utils.metrics import ConfusionMatrix

VARIANTS = (("rgb", "1,2,3"), ("rgbn", "1,2,3,4"))
STAGES = [  # (task, mode, weights it starts from or reads)
    ("global", 0, []),
    ("pre", 1, []),
    ("medium", 2, ["--pre_path", "pre.epoch.pth"]),
    ("all", 4, ["--pre_path", "pre.epoch.pth", "--c_path", "medium.epoch.pth", "--glo_path", "global.epoch.pth"]),
]
CELL, COVERAGE = 32, 0.7  # parcels of the generated scenes, and how much of each the polygons cover
ALL_WEIGHTS = ["--pre_path", "all.epoch.pth", "--c_path", "medium.epoch.pth", "--glo_path", "global.epoch.pth"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes, the split and the training")
    parser.add_argument("--out", default=None, help="output folder (default demo/scenes_seed<SEED>)")
    parser.add_argument("--scenes", type=int, default=4, help="scenes generated (default 4: 2 train, 1 val, 1 test)")
    parser.add_argument("--size", type=int, default=384, help="scene side in pixels (default 384)")
    parser.add_argument("--tile_size", type=int, default=192)
    parser.add_argument("--size_p", type=int, default=96)
    parser.add_argument("--size_g", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the patch stages (default 6)")
    parser.add_argument("--global_epochs", type=int, default=12, help="epochs of the global stage (default 12)")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join("demo", f"scenes_seed{args.seed}")
    try:
        _demo(args)
    except FCtLError as error:
        return report_error(error, parser)
    return 0


def _variant(args: argparse.Namespace, source: dict, name: str, bands: str) -> dict:
    """Prepare, train and predict one variant; its scores and seconds."""
    root = os.path.join(args.out, name)
    data, models, logs = (os.path.join(root, part) for part in ("data", "models", "runs"))
    code = prepare_scenes.main(["--scenes", *source["scenes"], "--labels", source["vector"], source["raster"],
                                "--class_field", "class", "--classes", source["classes"], "--dst", data,
                                "--tile_size", str(args.tile_size), "--split_by", "scene", "--val", "0.25",
                                "--test", "0.25", "--seed", str(args.seed), "--bands", bands])
    if code != 0:
        raise FCtLError("the demo stopped: tools.prepare_scenes failed (its error line is above)")
    with open(os.path.join(data, "dataset.json"), encoding="utf-8") as handle:
        prepared = json.load(handle)
    held_out = [i for i, scene in enumerate(prepared["scenes"]) if "test" in scene["tiles"]]
    if len(held_out) != 1:
        raise FCtLError(f"the demo expects one held-out scene, the split has {len(held_out)}")
    common = [sys.executable, "train_deep_globe.py", "--data_path", data, "--model_path", models, "--log_path", logs,
              "--backbone", "fpn_resnet18", "--size_p", str(args.size_p), "--size_g", str(args.size_g), "--device",
              "cpu", "--no_pretrained", "--seed", str(args.seed), "--num_workers", "0"]
    seconds = 0.0
    for task, mode, extra in STAGES:
        epochs = args.global_epochs if mode == 0 else args.epochs
        seconds += run_step(common + ["--task_name", task, "--mode", str(mode), "--train", "--epochs", str(epochs),
                                      "--lr", str(args.lr), "--batch_size", "2", "--sub_batch_size", "16", "--val_every",
                                      str(epochs)] + SHORT_RUN + extra)
    scene = source["scenes"][held_out[0]]
    predictions = os.path.join(root, "predictions")
    run_step(common + ["--task_name", "all", "--mode", "4", "--input", scene, "--bands", bands, "--prediction_path",
                       predictions, "--no_tta", "--sub_batch_size", "16"] + ALL_WEIGHTS)
    import rasterio

    stem = os.path.splitext(os.path.basename(scene))[0]
    with rasterio.open(os.path.join(predictions, f"{stem}_mask.tif")) as mask:
        predicted = mask.read(1)
    classes = load_class_table(source["classes"])
    confusion = ConfusionMatrix(classes.n_class)
    import torch

    confusion.update(torch.from_numpy(predicted), torch.from_numpy(source["truth"][held_out[0]]))
    scores = confusion.scores(classes.unscored)
    return {"scene": scene, "miou": scores["miou"], "iou": scores["iou"], "seconds": seconds, "data": data,
            "dataset": prepared}


def _unlabelled_check(data: str, vector_scenes: int, coverage_px: int) -> tuple[int, int]:
    """(pixels of the prepared label tiles of the vector-labelled scenes that lie beyond the polygons'
    reach, how many of them hold the ignore value)."""
    import glob
    import re

    import rasterio

    beyond = ignored = 0
    for path in glob.glob(os.path.join(data, "*", "Label", "*_mask.tif")):
        scene, col = (int(v) for v in re.search(r"scene_(\d+)_r\d+_c(\d+)_mask", path).groups())
        if scene >= vector_scenes:
            continue
        with rasterio.open(path) as tile:
            label = tile.read(1)
        columns = np.arange(col * label.shape[1], (col + 1) * label.shape[1])
        outside = np.broadcast_to(columns >= coverage_px, label.shape)
        beyond += int(outside.sum())
        ignored += int((label[outside] == IGNORE_INDEX).sum())
    return beyond, ignored


def _coverage_px(size: int, cell: int = CELL, coverage: float = COVERAGE) -> int:
    """The first column no polygon reaches: the generator draws the parcels that end within ``coverage``."""
    return int(coverage * size) // cell * cell


def _demo(args: argparse.Namespace) -> None:
    started = time.time()
    ensure_writable_dir(args.out, "out")
    source = make_scenes(os.path.join(args.out, "scenes"), n_scenes=args.scenes, size=args.size, cell=CELL,
                         coverage=COVERAGE, seed=args.seed)
    results = {name: _variant(args, source, name, bands) for name, bands in VARIANTS}
    classes = load_class_table(source["classes"])
    print(f"\nOwn-scenes demo (seed {args.seed}, fpn_resnet18, {args.scenes} scenes of {args.size} px, held out: "
          f"{os.path.basename(results['rgb']['scene'])}, {time.time() - started:.0f} s in all)")
    header = "".join(f"{name:>9}" for name in classes.names)
    print(f"{'variant':<9}{'mIoU':>8}{header}{'stages s':>10}")
    for name, _ in VARIANTS:
        r = results[name]
        ious = "".join(f"{100 * v:>9.2f}" for v in r["iou"])
        print(f"{name:<9}{100 * r['miou']:>8.2f}{ious}{r['seconds']:>10.0f}")
    print(f"rgbn - rgb: {100 * (results['rgbn']['miou'] - results['rgb']['miou']):+.2f} mIoU points")
    beyond, ignored = _unlabelled_check(results["rgbn"]["data"], args.scenes - 1, _coverage_px(args.size))
    print(f"prepared labels beyond the polygons' reach: {ignored} of {beyond} pixels hold the ignore value {IGNORE_INDEX}")
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump({name: {k: v for k, v in r.items() if k not in ("dataset",)} for name, r in results.items()}, handle,
                  indent=1)
    print(f"results: {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    sys.exit(main())
