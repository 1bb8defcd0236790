"""Prediction fingerprints: whether a change to the code keeps every prediction bit for bit.

    python -m tools.fingerprint --out /tmp/before            # in the old checkout
    python -m tools.fingerprint --out /tmp/after             # in the new one
    python -m tools.fingerprint --compare /tmp/before /tmp/after

For both backbones and every mode, seeded models (gates opened so every block matters) are saved in
our weight format, loaded back through ``create_model`` as a test run loads them, and run on one
non-square image with and without TTA; the summed logits of each run are saved. ``--compare`` says
which runs differ, by how much, and how many pixels changed class where the old logits were not a
near tie. The weights are written by the checkout that makes the
fingerprint, so a change of the weight format or of the initialisation shows up too.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from models.checkpoint import save_weights
from models.fctl import FCtLNet
from models.modes import MODES
from models.setup import create_model
from option import report_error
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor
from utils.errors import DataError, FCtLError
from utils.files import ensure_writable_dir

BACKBONES = {"fpn_resnet18": 64, "fcn8_vgg16": 72}  # backbone -> patch side (small: seconds on a CPU)
FLIP_MARGIN = 0.05  # a changed class where the old top two logits were further apart is a real change


def _weights(folder: str, backbone: str) -> dict[int, str]:
    files = {}
    for mode in MODES:
        torch.manual_seed(10 + mode)
        model = FCtLNet(mode, backbone, gamma_init=0.5)
        for param in model.parameters():
            if param.numel() == 1:  # the correlation gates
                param.data.fill_(0.5)
        files[mode] = os.path.join(folder, f"{backbone}_mode{mode}.pth")
        save_weights(model, files[mode])
    return files


def fingerprint(folder: str, backbones: list[str] | None = None) -> list[str]:
    """Write the logits of every run into ``folder`` (all of ``BACKBONES`` by default); returns the run names."""
    image = torch.randint(0, 256, (3, 150, 130), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    names = []
    for backbone in backbones or list(BACKBONES):
        size = BACKBONES[backbone]
        files = _weights(folder, backbone)
        for mode, spec in MODES.items():
            sources = {encoder.setting: files[encoder.source_mode] for encoder in spec.frozen}
            model = create_model(mode, backbone, pre_path=files[mode], training=False, **sources)
            predictor = Predictor(model, PipelineConfig(size, size, 3, 5))
            for tta in (False, True):
                name = f"{backbone}_mode{mode}_{'tta' if tta else 'one_view'}"
                logits = predictor.logits(image, tta=tta)
                torch.save(logits, os.path.join(folder, name + ".logits.pt"))
                names.append(name)
                print(f"{name}: logits {tuple(logits.shape)}, sum of |logits| {float(logits.abs().sum()):.6g}",
                      flush=True)
    return names


def compare(before: str, after: str) -> int:
    """Print one line per run; returns the number of runs that differ or are missing."""
    names = sorted(n for n in os.listdir(before) if n.endswith(".logits.pt"))
    if not names:
        raise DataError(f"no fingerprint (*.logits.pt) in {before}; make one with `out`")
    differ = 0
    for name in names:
        other = os.path.join(after, name)
        if not os.path.exists(other):
            print(f"{name}: missing in {after}")
            differ += 1
            continue
        a, b = torch.load(os.path.join(before, name)), torch.load(other)
        if a.shape == b.shape and torch.equal(a, b):
            print(f"{name}: identical")
            continue
        differ += 1
        if a.shape != b.shape:
            print(f"{name}: DIFFERS (shapes {tuple(a.shape)} and {tuple(b.shape)})")
            continue
        gap = float((a - b).abs().max())
        flipped = a.argmax(0) != b.argmax(0)
        top2 = a.topk(2, dim=0).values
        sure = int((flipped & (top2[0] - top2[1] > FLIP_MARGIN)).sum())
        print(f"{name}: DIFFERS (max |difference| {gap:.3g}, same class at "
              f"{100 * (1 - float(flipped.float().mean())):.2f}% of pixels, {sure} flipped where BEFORE's margin "
              f"between its top two classes is > {FLIP_MARGIN})")
    print(f"{len(names) - differ} of {len(names)} runs identical")
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="folder to write this checkout's fingerprint into")
    group.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="two fingerprint folders")
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        if args.compare:
            return 1 if compare(*args.compare) else 0
        fingerprint(ensure_writable_dir(args.out, "out"), args.backbones)
    except FCtLError as error:
        return report_error(error, parser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
