"""Small georeferenced scenes of your own, generated: what a mapping team brings to ``tools.prepare_scenes``.

``make_scenes`` writes into ``dst``:
- ``scenes/scene_<i>.tif``: ``size`` x ``size`` px, 4 uint8 bands (R, G, B, near-infrared; written as
  four grey bands, so GDAL reads no alpha band), 1 m pixels in UTM zone 31N (EPSG:32631), side by side;
- ``labels/labels.gpkg``: polygons of every scene but the last, in EPSG:4326, layer ``labels`` with the
  field ``class`` (class names); they cover only the left ``coverage`` of each scene, the rest has no
  label;
- ``labels/scene_<last>.tif``: the last scene's labels as a class-index raster on a coarser grid (2 m
  pixels, same CRS), covering the whole scene;
- ``classes.json``: the class table (``CLASSES``).

Classes: ``bare`` (brown), ``crop`` and ``sheet`` (the same green in R, G, B; bright and dark in the
near-infrared band, as vegetation and a green plastic sheet are). Each scene is a grid of rectangular
parcels of random classes with pixel noise, so the labels are exact on the parcels' edges.
"""

from __future__ import annotations

import json
import os

import numpy as np

CLASSES = {"name": "parcels", "title": "synthetic parcels",
           "classes": [{"name": "bare", "colour": [150, 100, 50]}, {"name": "crop", "colour": [0, 200, 0]},
                       {"name": "sheet", "colour": [0, 90, 255]}],
           "unscored": None}
RGB = np.array([[140, 110, 80], [70, 140, 60], [70, 140, 60]], dtype=np.float32)  # crop and sheet look alike
NIR = np.array([90.0, 200.0, 40.0], dtype=np.float32)
CRS = "EPSG:32631"
ORIGIN = (500000.0, 5400000.0)  # west, north of the first scene (metres)


def _parcels(size: int, cell: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """A class map (size, size) of square parcels and the parcels as (row0, col0, row1, col1, class)."""
    n = -(-size // cell)
    classes = rng.integers(0, 3, size=(n, n))
    boxes = [(r * cell, c * cell, min(size, (r + 1) * cell), min(size, (c + 1) * cell), int(classes[r, c]))
             for r in range(n) for c in range(n)]
    label = np.repeat(np.repeat(classes, cell, 0), cell, 1)[:size, :size].astype(np.uint8)
    return label, boxes


def make_scenes(dst: str, n_scenes: int = 3, size: int = 512, cell: int = 32, coverage: float = 0.7,
                seed: int = 0) -> dict:
    """Write the scenes, labels and class table (see the module doc); returns their paths and the true
    class maps: {"scenes": [...], "vector": path, "raster": path, "classes": path, "truth": [arrays]}."""
    import pyogrio
    import rasterio
    import shapely
    from rasterio.transform import from_origin
    from rasterio.warp import transform

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(dst, "scenes"), exist_ok=True)
    os.makedirs(os.path.join(dst, "labels"), exist_ok=True)
    scenes, truths, polygons, names = [], [], [], []
    for i in range(n_scenes):
        west, north = ORIGIN[0] + i * (size + 100), ORIGIN[1]
        label, boxes = _parcels(size, cell, rng)
        noise = rng.normal(0, 12, size=(4, size, size)).astype(np.float32)
        bands = np.concatenate([RGB[label].transpose(2, 0, 1), NIR[label][None]]) + noise
        path = os.path.join(dst, "scenes", f"scene_{i}.tif")
        with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=4, dtype="uint8", crs=CRS,
                           transform=from_origin(west, north, 1.0, 1.0), photometric="MINISBLACK",
                           tiled=True, blockxsize=256, blockysize=256, compress="deflate") as out:
            out.write(np.clip(np.rint(bands), 0, 255).astype(np.uint8))
        scenes.append(path)
        truths.append(label)
        if i < n_scenes - 1:
            for r0, c0, r1, c1, k in boxes:
                if c1 <= coverage * size:
                    polygons.append(shapely.box(west + c0, north - r1, west + c1, north - r0))
                    names.append(CLASSES["classes"][k]["name"])
        else:
            coarse = label[::2, ::2]
            raster = os.path.join(dst, "labels", f"scene_{i}.tif")
            with rasterio.open(raster, "w", driver="GTiff", height=coarse.shape[0], width=coarse.shape[1], count=1,
                               dtype="uint8", crs=CRS, transform=from_origin(west, north, 2.0, 2.0)) as out:
                out.write(coarse[None])

    def to_degrees(coords: np.ndarray) -> np.ndarray:
        lon, lat = transform(CRS, "EPSG:4326", coords[:, 0], coords[:, 1])
        return np.column_stack([lon, lat])

    vector = os.path.join(dst, "labels", "labels.gpkg")
    geometry = shapely.to_wkb(shapely.transform(np.array(polygons, dtype=object), to_degrees))
    pyogrio.raw.write(vector, geometry, [np.array(names, dtype=object)], fields=["class"], crs="EPSG:4326",
                      geometry_type="Polygon", layer="labels", driver="GPKG")
    classes = os.path.join(dst, "classes.json")
    with open(classes, "w", encoding="utf-8") as handle:
        json.dump(CLASSES, handle, indent=1)
    return {"scenes": scenes, "vector": vector, "raster": os.path.join(dst, "labels", f"scene_{n_scenes - 1}.tif"),
            "classes": classes, "truth": truths}
