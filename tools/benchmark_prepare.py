"""Memory and time of tools.prepare_scenes on one large 4-band scene with vector labels.

    python -m tools.benchmark_prepare --size 20000 --cell 20 --work /tmp/bench_prepare

Writes (block by block, never whole) a ``size`` x ``size`` 4-band uint8 tiled GeoTIFF in UTM zone 31N
of square parcels of ``cell`` px, and a GeoPackage in EPSG:4326 with one polygon per parcel of the left
70% of the scene ((size / cell)^2 x 0.7 polygons: about 700,000 for the defaults), then prepares it in a
fresh process (``--tile_size`` 2448, ``--bands`` 1,2,3,4, split by block) and prints that process's peak
resident memory above its baseline after the imports (VmHWM - VmRSS, from /proc), the seconds, and
the tiles written. The inputs are kept in ``--work`` for reruns (``--keep`` skips regenerating them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from dataset.synthetic_scenes import CLASSES, CRS, NIR, ORIGIN, RGB

_CHILD = r"""
import json, sys, time
from dataset.classes import load_class_table
from dataset.prepared import PrepareOptions, prepare_scenes
from utils.logging import process_memory_mb
import rasterio, pyogrio, shapely, torch  # the baseline includes what a run imports
args = json.loads(sys.argv[1])
base = process_memory_mb("VmRSS")
start = time.perf_counter()
summary = prepare_scenes([args["scene"]], [args["labels"]], load_class_table(args["classes"]), args["dst"],
                         PrepareOptions(tile_size=args["tile"], split_by="block", block_tiles=2, val=0.2, test=0.2,
                                        class_field="class", bands=tuple(args["bands"])))
print(json.dumps({"seconds": time.perf_counter() - start, "baseline_mb": base,
                  "peak_above_baseline_mb": process_memory_mb("VmHWM") - base,
                  "tiles": sum(c.tiles for c in summary.splits.values()), "dropped": summary.dropped}))
"""


def write_inputs(work: str, size: int, cell: int, seed: int = 0) -> dict:
    """The scene, the vector labels and the class table under ``work``; returns their paths."""
    import pyogrio
    import rasterio
    import shapely
    from rasterio.transform import from_origin
    from rasterio.warp import transform
    from rasterio.windows import Window

    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = -(-size // cell)
    classes = rng.integers(0, 3, size=(n, n)).astype(np.uint8)
    scene = os.path.join(work, "big.tif")
    west, north = ORIGIN
    rows = 1024
    with rasterio.open(scene, "w", driver="GTiff", height=size, width=size, count=4, dtype="uint8", crs=CRS,
                       transform=from_origin(west, north, 1.0, 1.0), photometric="MINISBLACK", tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="YES") as out:
        for y0 in range(0, size, rows):
            h = min(rows, size - y0)
            ys = np.arange(y0, y0 + h) // cell
            label = np.repeat(classes[ys], cell, axis=1)[:, :size]
            bands = np.concatenate([RGB[label].transpose(2, 0, 1), NIR[label][None]])
            bands += rng.normal(0, 12, size=bands.shape).astype(np.float32)
            out.write(np.clip(np.rint(bands), 0, 255).astype(np.uint8), window=Window(0, y0, size, h))
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = (c + 1) * cell <= 0.7 * size
    r, c = r[keep], c[keep]
    x0, x1 = west + c * cell, west + np.minimum((c + 1) * cell, size)
    y0, y1 = north - np.minimum((r + 1) * cell, size), north - r * cell
    lon0, lat0 = transform(CRS, "EPSG:4326", x0, y0)
    lon1, lat1 = transform(CRS, "EPSG:4326", x1, y1)
    boxes = shapely.box(np.array(lon0), np.array(lat0), np.array(lon1), np.array(lat1))
    names = np.array([CLASSES["classes"][k]["name"] for k in range(3)], dtype=object)[classes[r, c]]
    labels = os.path.join(work, "big.gpkg")
    if os.path.exists(labels):
        os.unlink(labels)
    pyogrio.raw.write(labels, shapely.to_wkb(boxes), [names], fields=["class"], crs="EPSG:4326",
                      geometry_type="Polygon", layer="labels", driver="GPKG")
    table = os.path.join(work, "classes.json")
    with open(table, "w", encoding="utf-8") as handle:
        json.dump(CLASSES, handle)
    return {"scene": scene, "labels": labels, "classes": table, "polygons": int(keep.sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20000, help="scene side in pixels (default 20000)")
    parser.add_argument("--cell", type=int, default=20, help="parcel side in pixels (default 20)")
    parser.add_argument("--tile_size", type=int, default=2448)
    parser.add_argument("--work", default="/tmp/bench_prepare", help="folder for the inputs and the output")
    parser.add_argument("--keep", action="store_true", help="reuse the inputs already in --work")
    parser.add_argument("--bands", default="1,2,3,4", help="the bands prepared (default all four: 1,2,3,4)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info_path = os.path.join(args.work, "inputs.json")
    if args.keep and os.path.exists(info_path):
        with open(info_path, encoding="utf-8") as handle:
            inputs = json.load(handle)
    else:
        inputs = write_inputs(args.work, args.size, args.cell)
        with open(info_path, "w", encoding="utf-8") as handle:
            json.dump(inputs, handle)
    print(f"inputs: {args.size} x {args.size} px 4-band scene, {inputs['polygons']} polygons "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    child = {**inputs, "dst": os.path.join(args.work, "prepared"), "tile": args.tile_size,
             "bands": [int(b) for b in args.bands.split(",")]}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(child)], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "the preparation failed", file=sys.stderr)
        return 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"prepare_scenes: {result['tiles']} tiles (+{result['dropped']} dropped) in {result['seconds']:.0f} s, "
          f"peak {result['peak_above_baseline_mb']:.0f} MB above the {result['baseline_mb']:.0f} MB import baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
