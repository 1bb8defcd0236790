"""Cut your own scenes and their labels into the split folders the trainer reads.

    python -m tools.prepare_scenes --scenes scenes/ --labels footprints.gpkg --class_field kind \\
        --classes my_classes.json --dst data_mine

--scenes takes what --input takes (files, folders, glob patterns, .txt lists). --labels is one file for
all scenes, or files / folders in which each scene's labels are the file named after it (scene
a.tif -> a.gpkg, a.tif, ...): label rasters (class indices or the class colours, on any grid and CRS)
or vector files (GeoPackage, Shapefile, GeoJSON, FlatGeobuf; --class_field holds class names or
indices). Pixels without a label are ignored in training and scoring (--unlabelled ignore) or become
a class (--unlabelled background). The output holds train / crossvali / offical_crossvali with Sat/ and
Label/ tiles (georeferenced GeoTIFFs) and a dataset.json; train on it with
    python train_deep_globe.py --dataset custom --data_path data_mine ...
(the class table comes from dataset.json). Re-running replaces an earlier result in --dst.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dataset.classes import load_class_table, shipped_table
from dataset.prepared import PrepareOptions, prepare_scenes
from dataset.scenes import InputRange, expand_inputs, parse_bands
from option import report_error
from utils.errors import FCtLError
from utils.logging import progress


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", required=True, help="scene rasters (files, folders, globs, .txt lists)")
    parser.add_argument("--labels", nargs="+", required=True,
                        help="one label file for all scenes, or files/folders with one file per scene, named after it")
    parser.add_argument("--classes", required=True, metavar="FILE",
                        help="the class-table JSON (see data/classes/deepglobe.json), or deepglobe / inria")
    parser.add_argument("--dst", required=True, help="output folder (created; an earlier preparation there is replaced)")
    parser.add_argument("--class_field", default=None,
                        help="vector labels: the attribute holding class names or indices")
    parser.add_argument("--unlabelled", default="ignore", metavar="ignore|CLASS",
                        help="pixels without a label: ignored (default) or this class")
    parser.add_argument("--tile_size", type=int, default=2448, help="tile side in pixels (default 2448)")
    parser.add_argument("--split_by", choices=("scene", "block"), default="scene",
                        help="whole scenes per split (default) or blocks of --block_tiles x --block_tiles tiles")
    parser.add_argument("--block_tiles", type=int, default=4, help="--split_by block: tiles per block side (default 4)")
    parser.add_argument("--val", type=float, default=0.15, help="fraction of scenes/blocks for validation (0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="fraction of scenes/blocks for the test split (0.15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--bands", default=None, help="the scene bands used as R,G,B (as for --input), e.g. 4,3,2")
    parser.add_argument("--input_range", nargs="+", default=None, metavar="LOW,HIGH",
                        help="how non-8-bit values map to 0..255 (as for --input): LOW,HIGH, one pair per band, "
                             "or percentiles pLOW,pHIGH")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        classes = shipped_table(args.classes) if args.classes in ("deepglobe", "inria") else load_class_table(args.classes)
        options = PrepareOptions(
            tile_size=args.tile_size, split_by=args.split_by, block_tiles=args.block_tiles, val=args.val,
            test=args.test, seed=args.seed, class_field=args.class_field,
            unlabelled=None if args.unlabelled == "ignore" else args.unlabelled,
            bands=None if args.bands is None else parse_bands(args.bands),
            input_range=None if args.input_range is None else InputRange.parse(args.input_range))
        summary = prepare_scenes(expand_inputs(args.scenes), args.labels, classes, args.dst, options, progress)
    except FCtLError as error:
        return report_error(error, parser)
    print("\n".join(summary.lines()))
    print(f"wrote {args.dst}/dataset.json; train with: python train_deep_globe.py --dataset custom --data_path {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
