"""Write the synthetic DeepGlobe-format demo data set (design: dataset/synthetic.py), or with
``--dataset inria`` Inria-format building tiles (dataset/synthetic_inria.py).

    python -m tools.make_synthetic --out data/synthetic --train 40 --val 12 --test 8 --size 256 --seed 0
    python -m tools.make_synthetic --dataset inria --out data/synthetic_inria --size 256

Prints, for the written DeepGlobe-format validation and test masks, how much the field labels depend
on context.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from dataset.io import read_mask
from dataset.split_layout import SPLIT_DIRS
from dataset.synthetic import MIN_SIZE, context_stats, generate
from dataset.synthetic_inria import generate_inria
from option import report_error
from utils.errors import FCtLError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="deepglobe", choices=["deepglobe", "inria"],
                        help="deepglobe: 7-class land cover scenes (PNG); inria: building / background tiles (TIFF)")
    parser.add_argument("--out", default="data/synthetic", help="output folder (default: data/synthetic)")
    parser.add_argument("--train", type=int, default=40, help="training images")
    parser.add_argument("--val", type=int, default=12, help="validation (crossvali) images")
    parser.add_argument("--test", type=int, default=8, help="test (offical_crossvali) images, with labels")
    parser.add_argument("--size", type=int, default=256, help=f"image side in pixels (>= {MIN_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--patch", type=int, default=96, help="patch size used for the context report")
    parser.add_argument("--detail", type=float, default=0.0,
                        help="deepglobe: fine, ragged class borders (about 12 px features; 0.5 is strong; 0: none)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if args.size < MIN_SIZE:
        parser.error(f"--size must be >= {MIN_SIZE}")
    if args.patch < 2:
        parser.error("--patch must be >= 2")
    if not args.detail >= 0 or (args.detail and args.dataset == "inria"):
        parser.error("--detail must be 0 or more, and applies to --dataset deepglobe only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        if args.dataset == "inria":
            written = generate_inria(args.out, args.train, args.val, args.test, args.size, args.seed)
        else:
            written = generate(args.out, args.train, args.val, args.test, args.size, args.seed, detail=args.detail)
    except FCtLError as error:
        return report_error(error, build_parser())
    seconds = time.perf_counter() - start
    counts = ", ".join(f"{split} {len(ids)}" for split, ids in written.items())
    print(f"wrote {counts} images of {args.size}x{args.size} to {args.out} in {seconds:.1f} s")
    labels = [
        read_mask(os.path.join(args.out, SPLIT_DIRS[split], "Label", f"{name}_mask.png"), None).numpy()
        for split in ("crossvali", "test")
        for name in written[split]
    ]
    if labels and args.dataset == "deepglobe":
        stats = context_stats(labels, args.patch)
        print(
            f"context check on {len(labels)} validation+test masks, patch {args.patch}: "
            f"{stats['blind_windows']:.0%} of patch windows show field but no settlement; accuracy on field "
            f"pixels: patch-only oracle <= {stats['patch_oracle']:.1%}, 3x-window oracle "
            f"{stats['window_oracle']:.1%}, whole-image oracle {stats['global_oracle']:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
