"""Labels of a scene, on the scene's own pixel grid, window by window: from a label raster or from vector polygons.

A ``SceneGrid`` is the scene's size, CRS and transform. A label source answers ``window(top, left,
height, width)`` with uint8 (height, width) class indices of a ``ClassTable`` and ``IGNORE_INDEX`` where
it has no label; a window may reach beyond the scene (those pixels are unlabelled). Nothing is ever
read whole:

- ``RasterLabels``: a raster of class indices (one band, read through the table's rules: indices,
  aliases, its ``ignore`` value) or of the table's colours (three bands, exact colours), on any grid.
  When its CRS or grid differs from the scene's it is resampled (nearest neighbour, so every pixel is a
  real class) and reprojected onto the scene's grid through a GDAL warped view of the window only.
  Pixels outside the raster and its nodata pixels have no label.
- ``VectorLabels``: polygons of any file GDAL reads as vectors (GeoPackage, Shapefile, GeoJSON,
  FlatGeobuf, ...), whose attribute ``class_field`` holds class names or class indices of the table.
  For each window only the features whose bounding box meets the window are read (through the file's
  spatial index where it has one), reprojected to the scene's CRS, and burnt on the window's pixels (a
  pixel is inside a polygon when its centre is; where polygons overlap, the later feature in the file
  wins). Pixels no polygon covers have no label.

``unlabelled`` (the ``--unlabelled`` rule): None leaves pixels without a label at ``IGNORE_INDEX``; a
class index makes the pixels beyond the labels' coverage that class instead (e.g. background around
building footprints). Nodata pixels of a label raster stay ``IGNORE_INDEX`` in either case.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dataset.classes import ClassTable
from dataset.scenes import missing_sources
from utils.errors import ConfigError, DataError, InputFileError, reason
from utils.labels import IGNORE_INDEX

VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite")


@dataclass(frozen=True)
class SceneGrid:
    """The pixel grid of a scene: its size, CRS (a rasterio CRS) and affine transform (pixel -> CRS)."""

    height: int
    width: int
    crs: Any
    transform: Any

    def window_transform(self, top: int, left: int) -> Any:
        """The transform of the window whose top-left pixel is (top, left)."""
        from rasterio.transform import Affine

        return self.transform @ Affine.translation(left, top)

    def window_bounds(self, top: int, left: int, height: int, width: int) -> tuple[float, float, float, float]:
        """(west, south, east, north) of a window in the scene's CRS."""
        from rasterio.transform import array_bounds

        return array_bounds(height, width, self.window_transform(top, left))

    def bounds(self) -> tuple[float, float, float, float]:
        return self.window_bounds(0, 0, self.height, self.width)


class LabelSource(Protocol):
    """Labels on a scene's grid (see the module doc)."""

    path: str

    def window(self, top: int, left: int, height: int, width: int) -> np.ndarray: ...

    def close(self) -> None: ...


def _meets(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two (west, south, east, north) boxes overlap (not just touch)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]



def _fill(unlabelled: int | None) -> int:
    return IGNORE_INDEX if unlabelled is None else unlabelled


class RasterLabels:
    """A label raster read on a scene's grid (see the module doc). Use as a context manager or ``close``."""

    def __init__(self, path: str, grid: SceneGrid, classes: ClassTable, unlabelled: int | None = None) -> None:
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT
        from rasterio.warp import transform_bounds

        self.path, self.grid, self.classes, self.unlabelled = path, grid, classes, unlabelled
        if not os.path.isfile(path):
            raise InputFileError(f"label raster {path} not found; check the path", path=path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._src = rasterio.open(path)
        except rasterio.errors.RasterioError as exc:
            raise InputFileError(f"label raster {path} is not readable by GDAL ({reason(exc)}); replace the file",
                                 path=path) from None
        src = self._src
        try:
            missing = missing_sources(src)
            if missing:
                raise InputFileError(f"label raster {path} reads the file {missing[0]}, which does not exist; restore it "
                                     f"or correct the source file names in {os.path.basename(path)}", path=path)
            if src.count not in (1, 3, 4):
                raise DataError(f"label raster {path} has {src.count} bands; labels are one band of class indices or "
                                f"three of the class colours")
            if src.count == 1 and src.dtypes[0] not in ("uint8", "int8", "uint16", "int16", "uint32", "int32"):
                raise DataError(f"label raster {path} holds {src.dtypes[0]} values; class indices must be integers")
            self.colours = src.count >= 3
            if src.crs is None and grid.crs is not None:
                raise DataError(f"label raster {path} has no CRS; the scene is in {grid.crs.to_string()}: "
                                f"georeference the labels (gdal_edit.py -a_srs) or write them on the scene's grid")
            same_size = (src.height, src.width) == (grid.height, grid.width)
            if grid.crs is None:  # a scene without georeferencing: its labels must be on its pixel grid
                if not same_size:
                    raise DataError(f"label raster {path} is {src.width}x{src.height} px and its scene, which has no "
                                    f"CRS, {grid.width}x{grid.height}: labels of a scene without georeferencing must "
                                    f"lie on its pixel grid")
                same_grid = True
            else:
                same_grid = src.crs == grid.crs and src.transform == grid.transform and same_size
            if grid.crs is not None and not _meets(transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21),
                                                   grid.bounds()):
                cover = tuple(round(v) for v in src.bounds)
                raise DataError(f"label raster {path} and its scene do not meet (labels cover {cover} in "
                                f"{src.crs.to_string()}); pair each scene with its own labels")
            self._view = src if same_grid else WarpedVRT(
                src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=Resampling.nearest)
            self._footprint = None if same_grid else self._outline(src, grid)
        except BaseException:
            src.close()
            raise

    @staticmethod
    def _outline(src: Any, grid: SceneGrid) -> Any:
        """The label raster's extent as a polygon in the scene's CRS (edges densified before transforming)."""
        import shapely
        from rasterio.warp import transform

        box = shapely.segmentize(shapely.box(*src.bounds), max(src.res) * 16)

        def move(coords: np.ndarray) -> np.ndarray:
            xs, ys = transform(src.crs, grid.crs, coords[:, 0], coords[:, 1])
            return np.column_stack([xs, ys])

        return shapely.transform(box, move)

    def __enter__(self) -> RasterLabels:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._view is not self._src:
            self._view.close()
        self._src.close()

    def window(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """uint8 (height, width): class indices, ``IGNORE_INDEX`` (or the unlabelled class) without a label."""
        from rasterio.windows import Window

        out = np.full((height, width), _fill(self.unlabelled), dtype=np.uint8)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, self.grid.height), min(left + width, self.grid.width)
        if y1 <= y0 or x1 <= x0:
            return out
        window = Window(x0, y0, x1 - x0, y1 - y0)
        try:
            values = self._view.read(list(range(1, min(self._view.count, 3) + 1)), window=window)
            valid = self._view.read_masks(1, window=window) > 0
        except Exception as exc:
            raise InputFileError(f"label raster {self.path}: rows {y0}..{y1} cannot be read ({reason(exc)}); "
                                 f"the file is damaged: replace it", path=self.path) from None
        where = f"{self.path} (rows {y0}..{y1}, columns {x0}..{x1} of the scene's grid)"
        if self.colours:
            rgb = np.moveaxis(values, 0, -1)
            rgb[~valid] = self.classes.colours[0]  # any class colour: overwritten below
            labels = self.classes.colour_to_index(np.ascontiguousarray(rgb), where)
        else:
            band = values[0]
            band[~valid] = 0
            labels = self.classes.index_values(band, where, "raster")
        labels = labels.copy()
        labels[~valid] = _fill(self.unlabelled)
        if self.unlabelled is not None:  # nodata inside the raster stays unlabelled; only beyond it is a class
            labels[~valid & self._inside(y0, x0, y1, x1)] = IGNORE_INDEX
        out[y0 - top:y1 - top, x0 - left:x1 - left] = labels
        return out

    def _inside(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """bool (y1 - y0, x1 - x0): the scene pixels whose centre lies within the label raster's extent."""
        if self._footprint is None:
            return np.ones((y1 - y0, x1 - x0), dtype=bool)
        from rasterio.features import rasterize

        return rasterize([(self._footprint, 1)], out_shape=(y1 - y0, x1 - x0),
                         transform=self.grid.window_transform(y0, x0), fill=0, dtype="uint8").astype(bool)


class VectorLabels:
    """Polygons burnt on a scene's grid (see the module doc)."""

    def __init__(self, path: str, grid: SceneGrid, classes: ClassTable, class_field: str,
                 unlabelled: int | None = None) -> None:
        import pyogrio
        from rasterio.crs import CRS
        from rasterio.warp import transform_bounds

        self.path, self.grid, self.classes, self.class_field, self.unlabelled = path, grid, classes, class_field, unlabelled
        if not os.path.exists(path):
            raise InputFileError(f"vector labels {path} not found; check the path", path=path)
        try:
            info = pyogrio.read_info(path, force_total_bounds=True)
        except Exception as exc:
            raise InputFileError(f"vector labels {path} are not readable by GDAL ({reason(exc)}); replace the file",
                                 path=path) from None
        fields = [str(f) for f in info["fields"]]
        if class_field not in fields:
            raise ConfigError(f"vector labels {path} have no field `{class_field}` (fields: {', '.join(fields) or 'none'}); "
                              f"pass the one that holds the classes as `class_field`")
        if info["crs"] is None:
            raise DataError(f"vector labels {path} have no CRS; set it (e.g. ogr2ogr -a_srs EPSG:4326) and run again")
        if grid.crs is None:
            raise DataError(f"vector labels {path} need a georeferenced scene; the scene has no CRS")
        self.crs = CRS.from_user_input(info["crs"])
        self.count = int(info["features"])
        self._same_crs = self.crs == grid.crs
        total = info.get("total_bounds")
        scene_box = transform_bounds(grid.crs, self.crs, *grid.bounds(), densify_pts=21)
        if total is None or not _meets(scene_box, total):
            raise DataError(f"vector labels {path} and their scene do not meet (the scene covers "
                            f"{tuple(round(v, 6) for v in scene_box)} in {self.crs.to_string()}, the labels "
                            f"{None if total is None else tuple(round(float(v), 6) for v in total)}); pair each scene "
                            f"with its labels, or check the labels' CRS")
        self._lookup = self._class_lookup(pyogrio)

    def _class_lookup(self, pyogrio) -> dict[Any, int]:
        """Every distinct value of the class field -> its class index; DataError for values that are no class."""
        try:
            _, _, _, (values,) = pyogrio.raw.read(self.path, columns=[self.class_field], read_geometry=False)[:4]
        except Exception as exc:
            raise InputFileError(f"vector labels {self.path}: field `{self.class_field}` cannot be read "
                                 f"({reason(exc)})", path=self.path) from None
        lookup, bad = {}, []
        for value in dict.fromkeys(values.tolist()):
            index = self._class_of(value)
            if index is None:
                bad.append(value)
            else:
                lookup[value] = index
        if bad:
            raise DataError(f"vector labels {self.path}: `{self.class_field}` holds {len(bad)} value(s) that are no "
                            f"{self.classes.title} class (first: {bad[0]!r}); the classes are "
                            f"{', '.join(self.classes.names)} (names or indices 0..{self.classes.n_class - 1})")
        return lookup

    def _class_of(self, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, str):
            if value in self.classes.names:
                return self.classes.names.index(value)
            return int(value) if value.strip().isdigit() and int(value) < self.classes.n_class else None
        if isinstance(value, (int, np.integer)) or (isinstance(value, float) and float(value).is_integer()):
            return int(value) if 0 <= int(value) < self.classes.n_class else None
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> VectorLabels:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _to_scene(self, geometries: np.ndarray) -> np.ndarray:
        """Shapely geometries in the labels' CRS -> the same in the scene's CRS (GDAL's transform)."""
        import shapely
        from rasterio.warp import transform

        if self._same_crs:
            return geometries

        def move(coords: np.ndarray) -> np.ndarray:
            xs, ys = transform(self.crs, self.grid.crs, coords[:, 0], coords[:, 1])
            return np.column_stack([xs, ys])

        return shapely.transform(geometries, move)

    def window(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """uint8 (height, width): class indices, ``IGNORE_INDEX`` (or the unlabelled class) outside every polygon."""
        import pyogrio
        import shapely
        from rasterio.features import rasterize
        from rasterio.warp import transform_bounds

        fill = _fill(self.unlabelled)
        box = self.grid.window_bounds(top, left, height, width)
        query = box if self._same_crs else transform_bounds(self.grid.crs, self.crs, *box, densify_pts=21)
        try:
            _, _, wkb, (values,) = pyogrio.raw.read(self.path, columns=[self.class_field], bbox=tuple(query))[:4]
        except Exception as exc:
            raise InputFileError(f"vector labels {self.path} cannot be read ({reason(exc)}); replace the file",
                                 path=self.path) from None
        if len(wkb) == 0:
            return np.full((height, width), fill, dtype=np.uint8)
        geometries = self._to_scene(shapely.from_wkb(wkb))
        keep = ~shapely.is_empty(geometries) & ~shapely.is_missing(geometries)
        shapes = [(g, self._lookup[v]) for g, v, k in zip(geometries, values.tolist(), keep) if k]
        if not shapes:
            return np.full((height, width), fill, dtype=np.uint8)
        return rasterize(shapes, out_shape=(height, width), transform=self.grid.window_transform(top, left),
                         fill=fill, dtype="uint8")


def open_labels(path: str, grid: SceneGrid, classes: ClassTable, *, class_field: str | None = None,
                unlabelled: int | None = None) -> RasterLabels | VectorLabels:
    """The label source of ``path``: vector labels for the vector suffixes (``VECTOR_SUFFIXES``; they need
    ``class_field``), a label raster otherwise."""
    if path.lower().endswith(VECTOR_SUFFIXES) or os.path.isdir(path):
        if not class_field:
            raise ConfigError(f"vector labels {path} need `class_field`: the attribute that holds the class names "
                              f"or indices")
        return VectorLabels(path, grid, classes, class_field, unlabelled)
    return RasterLabels(path, grid, classes, unlabelled)
