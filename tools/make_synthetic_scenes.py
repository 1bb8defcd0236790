"""Write small georeferenced scenes with vector and raster labels, to try tools.prepare_scenes on.

    python -m tools.make_synthetic_scenes --dst demo_scenes
    python -m tools.prepare_scenes --scenes demo_scenes/scenes --labels demo_scenes/labels/labels.gpkg \\
        demo_scenes/labels/scene_2.tif --class_field class --classes demo_scenes/classes.json --bands 1,2,3 \\
        --tile_size 256 --dst data_scenes

The scenes are 4-band (R, G, B, near-infrared) uint8 GeoTIFFs in UTM zone 31N; every scene but the last is
labelled by polygons in EPSG:4326 over part of it, the last by a class-index raster on a coarser grid (see
dataset/synthetic_scenes.py).
"""

from __future__ import annotations

import argparse
import sys

from dataset.synthetic_scenes import make_scenes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dst", required=True, help="output folder")
    parser.add_argument("--scenes", type=int, default=3, help="number of scenes (default 3, at least 2)")
    parser.add_argument("--size", type=int, default=1024, help="scene side in pixels (default 1024)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.scenes < 2 or args.size < 64:
        parser.error("--scenes must be at least 2 and --size at least 64")
    out = make_scenes(args.dst, n_scenes=args.scenes, size=args.size, seed=args.seed)
    print(f"wrote {len(out['scenes'])} scenes, {out['vector']}, {out['raster']} and {out['classes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
