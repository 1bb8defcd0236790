"""How far a global view taken from a GeoTIFF's overviews is from the exact one.

FCtL's large context is the whole scene resized to size_g x size_g with PIL-style antialiased bilinear
filtering. For a windowed scene the pipeline computes exactly that in one streaming pass over the scene
(``pipeline.contexts.resize_in_strips``). A file with overviews offers a cheaper way: read the smallest
overview that is still larger than size_g (GDAL picks it for a decimated read) and resize that. This
tool measures the difference on a synthetic scene, in 0..255 units, next to the difference between the
strip pass and a single in-memory resize (float rounding only).

    python -m tools.overview_check --side 8192 --size_g 508
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192, help="side of the square synthetic scene")
    parser.add_argument("--size_g", type=int, default=508)
    parser.add_argument("--size_p", type=int, default=508)
    parser.add_argument("--resampling", default="average", help="GDAL resampling used to build the overviews")
    opts = parser.parse_args()

    import rasterio
    import torch
    from rasterio.enums import Resampling

    from dataset.scenes import RasterScene
    from dataset.synthetic import write_synthetic_raster
    from pipeline.contexts import global_view
    from pipeline.sources import WindowedSource

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scene.tif")
        write_synthetic_raster(path, opts.side, opts.side, tile=512)
        factors = [f for f in (2, 4, 8, 16, 32, 64) if opts.side // f >= opts.size_g // 2]
        with rasterio.open(path, "r+") as dst:
            dst.build_overviews(factors, getattr(Resampling, opts.resampling))
        with RasterScene(path) as scene:
            exact = global_view(WindowedSource(scene), opts.size_g)
            # The smallest overview at least twice size_g: GDAL serves a decimated read from it.
            factor = max([1] + [f for f in factors if opts.side // f >= 2 * opts.size_g])
            small = opts.side // factor
            with rasterio.open(path) as src:
                data = src.read(out_shape=(3, small, small), resampling=Resampling.nearest)
            from_overview = global_view(torch.from_numpy(data), opts.size_g)
            difference = (exact - from_overview).abs() * 255
            print(f"scene {opts.side} px, size_g {opts.size_g}, overview 1/{factor} ({small} px, {opts.resampling}):")
            print(f"  global view difference: max {difference.max():.2f}, mean {difference.mean():.3f} (0..255 units)")
            whole = torch.from_numpy(scene.read(0, 0, opts.side, opts.side))
            direct = torch.nn.functional.interpolate(whole.float().div_(255).unsqueeze(0), size=(opts.size_g,) * 2,
                                                     mode="bilinear", antialias=True, align_corners=False)
            rounding = (exact - direct).abs() * 255
            print(f"  for scale, the strip pass against one in-memory resize: max {rounding.max():.5f} "
                  f"(float rounding)")


if __name__ == "__main__":
    main()
