"""Class maps as polygons, written band by band: one polygon per connected region of each class.

``RegionTracker`` receives a class map as bands of rows, top to bottom, as the pipeline finalises
them, and hands back each region once it is complete. Regions are 4-connected (pixels that share an
edge), like GDAL's polygonize: two pixels of a class that touch only at a corner are two regions. In
each band the regions of every class are labelled (``scipy.ndimage.label``) and polygonized with exact
pixel edges (``rasterio.features.shapes``); a region that reaches the band's last row stays open, and
the regions of the next band that continue it (same class, an edge shared across the band border) join
it. A region that no longer reaches the newest row is finished: its pieces are merged into one polygon
(holes included) and it leaves memory. What is held is therefore the open regions only, whatever the
scene's height. Their pieces are held as WKB, the bytes they are written as: GEOS objects of the same
polygons take several times that (every ring is an object with its own coordinate array), which a region
spanning the scene, with a piece per band and its holes, would keep until the last band.

``VectorBandWriter`` turns finished regions into features: the polygon in the scene's CRS (pixel
coordinates for a scene without a transform), ``class_index``, ``class_name``, ``area`` (CRS units
squared: pixels x the pixel's area, exact) and ``mean_confidence`` (the region's mean top-1 probability,
0..1, from the confidence band). Nodata pixels and the classes in ``skip`` are left out. With
``simplify`` > 0 each polygon is simplified (shapely, topology kept within the polygon) to that
tolerance in CRS units; neighbouring polygons are simplified independently, so their shared edges may
then no longer match exactly. Features go to a scratch GeoPackage with the band that finishes them; at
the end it becomes the requested format (``FORMATS``: GeoPackage, GeoJSON with the scene's CRS,
FlatGeobuf) through GDAL's streaming Arrow interface, and the file appears under its final name only
when complete (``utils.files.atomic_path``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from utils.errors import DataError
from utils.files import atomic_path, scratch_path, write_error
from utils.logging import native_failures

FORMATS = {"gpkg": "GPKG", "geojson": "GeoJSON", "fgb": "FlatGeobuf"}
FIELDS = ("class_index", "class_name", "area", "mean_confidence")
CHUNK_PIXELS = 1 << 21  # pixels labelled and polygonized at a time (module doc)
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


@dataclass
class Region:
    """A connected region of one class: its polygon pieces in pixel coordinates (one per band chunk it
    spans) as WKB, its pixel count and the sum of its confidence values (0..255 each)."""

    class_index: int
    pieces: list[bytes] = field(default_factory=list)
    pixels: int = 0
    confidence_sum: int = 0

    def absorb(self, other: Region) -> None:
        self.pieces.extend(other.pieces)
        self.pixels += other.pixels
        self.confidence_sum += other.confidence_sum

    def polygon(self):
        """The region's pieces merged into one polygon (pixel coordinates)."""
        import shapely

        if len(self.pieces) == 1:
            return shapely.from_wkb(self.pieces[0])
        return shapely.union_all(shapely.from_wkb(self.pieces))


class RegionTracker:
    """The connected regions of a class map fed as bands of whole rows, top to bottom (module doc).

    ``add(y0, classes, confidence, keep)`` takes a band: (h, W) class indices, (h, W) uint8 confidence
    or None, and (h, W) bool of the pixels to vectorize; it returns the regions finished by it.
    ``finish()`` returns the regions still open after the last band.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self._next = 1  # global region labels start at 1 (0: no region)
        self._parent: dict[int, int] = {}
        self._open: dict[int, Region] = {}  # root label -> region
        self._bottom: np.ndarray | None = None  # global labels of the last row seen (0 where nothing)
        self._bottom_classes: np.ndarray | None = None
        self._row = 0

    def _find(self, label: int) -> int:
        parent = self._parent
        root = label
        while parent[root] != root:
            root = parent[root]
        while parent[label] != root:
            parent[label], label = root, parent[label]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if len(self._open[ra].pieces) < len(self._open[rb].pieces):
            ra, rb = rb, ra
        self._open[ra].absorb(self._open.pop(rb))
        self._parent[rb] = ra

    def _label(self, classes: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels (h, W) int32 from 1 within the band, class of each label): 4-connected regions per class."""
        from scipy import ndimage

        labels = np.zeros(classes.shape, dtype=np.int32)
        label_classes = [0]
        present = np.flatnonzero(np.bincount(classes[keep].ravel(), minlength=256))
        for value in present:
            found, count = ndimage.label(keep & (classes == value), structure=_FOUR)
            if count:
                start = len(label_classes)
                labels[found > 0] = found[found > 0] + (start - 1)
                label_classes.extend([int(value)] * count)
        return labels, np.asarray(label_classes, dtype=np.int64)

    def add(self, y0: int, classes: np.ndarray, confidence: np.ndarray | None, keep: np.ndarray) -> list[Region]:
        if y0 != self._row or classes.shape[1] != self.width:
            raise ValueError(f"a band at row {y0} of width {classes.shape[1]} does not follow row {self._row} of a "
                             f"class map {self.width} wide")
        h = classes.shape[0]
        self._row += h
        labels, label_classes = self._label(classes, keep)
        count = len(label_classes) - 1
        pixels = np.bincount(labels.ravel(), minlength=count + 1)
        sums = (np.bincount(labels.ravel(), weights=confidence.ravel(), minlength=count + 1).astype(np.int64)
                if confidence is not None else np.zeros(count + 1, dtype=np.int64))
        offset = self._next - 1
        self._next += count
        for local in range(1, count + 1):
            label = local + offset
            self._parent[label] = label
            self._open[label] = Region(int(label_classes[local]), [], int(pixels[local]), int(sums[local]))
        if count:
            values, pieces = _polygonize(labels, y0)
            for value, piece in zip(values, pieces):
                self._open[value + offset].pieces.append(piece)
        # Regions that continue across the border with the previous band: same class, one edge shared.
        if self._bottom is not None:
            top = np.where(labels[0] > 0, labels[0] + offset, 0)
            joined = (self._bottom > 0) & (top > 0) & (self._bottom_classes == classes[0])
            for a, b in np.unique(np.stack([self._bottom[joined], top[joined]], axis=1), axis=0):
                self._union(int(a), int(b))
        self._bottom = np.where(labels[-1] > 0, labels[-1] + offset, 0)
        self._bottom_classes = classes[-1].copy()
        roots = {int(label): self._find(int(label)) for label in np.unique(self._bottom) if label}
        finished = [root for root in self._open if root not in set(roots.values())]
        regions = [self._open.pop(root) for root in finished]
        # Only the labels of the newest row can be joined later: the label forest keeps those and the open
        # roots, so it does not grow with the number of regions the scene has had.
        self._parent = {**{root: root for root in self._open}, **roots}
        return regions

    def finish(self) -> list[Region]:
        """The regions still open: call after the last band."""
        regions = list(self._open.values())
        self._open.clear()
        self._parent.clear()
        self._bottom = None
        return regions

    @property
    def open_regions(self) -> int:
        return len(self._open)

    @property
    def labels_held(self) -> int:
        """Labels the tracker keeps to join later bands: those of the newest row and the open regions'."""
        return len(self._parent)


def _polygonize(labels: np.ndarray, y0: int) -> tuple[list[int], np.ndarray]:
    """(label of each polygon, the polygons' WKB in pixel coordinates shifted down by ``y0``): one polygon
    per label of a band whose labels are 4-connected regions (GDAL's polygonize through rasterio); the
    polygons are built and encoded in vectorised calls rather than one GeoJSON mapping at a time."""
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine

    values, rings_per_polygon, ring_sizes, points = [], [], [], []
    for geometry, value in shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.translation(0, y0)):
        rings = geometry["coordinates"]
        values.append(int(value))
        rings_per_polygon.append(len(rings))
        for ring in rings:
            ring_sizes.append(len(ring))
            points.extend(ring)
    rings = shapely.linearrings(np.asarray(points, dtype=np.float64),
                                indices=np.repeat(np.arange(len(ring_sizes)), ring_sizes))
    return values, shapely.to_wkb(shapely.polygons(rings, indices=np.repeat(np.arange(len(values)), rings_per_polygon)))


class VectorBandWriter:
    """Context manager writing the polygons of a class map fed band by band (module doc).

    profile: ``RasterScene.profile()`` (height, width, crs, transform; a scene georeferenced by ground control
    points or RPCs only is refused: polygons need a transform).
    names: the class names (``class_name`` of index i). fmt: a key of ``FORMATS``. skip: class indices
    left out. simplify: tolerance in CRS units (0: exact pixel edges).
    """

    def __init__(self, path: str, profile: dict, names: Sequence[str], fmt: str, *, skip: Iterable[int] = (),
                 simplify: float = 0.0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"vector format {fmt!r} is not one of {', '.join(FORMATS)}")
        if profile.get("gcps") or (profile.get("rpcs") is not None and profile.get("transform") is None):
            kind = "ground control points" if profile.get("gcps") else "rational polynomial coefficients (RPCs)"
            raise DataError(f"cannot write {os.path.basename(path)}: its scene is georeferenced by {kind}, not a "
                            f"transform; warp it first (gdalwarp) to vectorize it")
        self.path, self.fmt, self.names, self.simplify = path, fmt, list(names), float(simplify)
        self.width = int(profile["width"])
        self.crs = profile.get("crs")
        transform = profile.get("transform")
        self._affine = None if transform is None else tuple(transform)[:6]
        self.pixel_area = 1.0 if transform is None else abs(transform.a * transform.e - transform.b * transform.d)
        self.skip = np.zeros(256, dtype=bool)
        self.skip[list(skip)] = True
        self.written = 0
        self._tracker = RegionTracker(self.width)
        self._batch: list[Region] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> VectorBandWriter:
        try:
            self._tmp = self._stack.enter_context(atomic_path(self.path))
            self._scratch = self._stack.enter_context(scratch_path(self._tmp + ".gpkg"))
        except BaseException:
            self._stack.close()
            raise
        return self

    def write(self, y0: int, classes: np.ndarray, confidence: np.ndarray | None = None,
              valid: np.ndarray | None = None) -> None:
        """The next band: (h, W) class indices from row ``y0``, its (h, W) uint8 confidence (None: the
        mean confidence is written as 0) and (h, W) bool of the pixels with data (None: all)."""
        classes = np.asarray(classes)
        # Labelling and polygonizing make several full-size copies of what they are given (labels, masks,
        # GDAL's own): a band goes through in chunks of about CHUNK_PIXELS, so they stay small whatever
        # the scene's width. The tracker joins the chunks as it joins bands.
        rows = max(1, CHUNK_PIXELS // max(1, self.width))
        for start in range(0, classes.shape[0], rows):
            part = slice(start, start + rows)
            keep = ~self.skip[classes[part]]
            if valid is not None:
                keep &= valid[part]
            self._batch.extend(self._tracker.add(y0 + start, classes[part],
                                                 None if confidence is None else confidence[part], keep))
        # Finished regions leave memory with the band that finished them.
        if self._batch:
            self._flush()

    def _features(self, regions: list[Region]):
        import shapely

        geometries = np.asarray([region.polygon() for region in regions] or np.empty(0), dtype=object)
        if self._affine is not None:
            a, b, c, d, e, f = self._affine
            matrix, shift = np.array([[a, d], [b, e]]), np.array([c, f])
            geometries = shapely.transform(geometries, lambda xy: xy @ matrix + shift)
        if self.simplify > 0:
            geometries = shapely.simplify(geometries, self.simplify, preserve_topology=True)
        classes = np.array([r.class_index for r in regions], dtype=np.int32)
        pixels = np.array([r.pixels for r in regions], dtype=np.float64)
        fields = [classes, np.array([self.names[c] if c < len(self.names) else str(c) for c in classes], dtype=object),
                  pixels * self.pixel_area,
                  np.array([r.confidence_sum for r in regions], dtype=np.float64) / (255.0 * np.maximum(pixels, 1))]
        return shapely.to_wkb(geometries), fields

    def _flush(self) -> None:
        from pyogrio import raw

        regions, self._batch = self._batch, []
        if not regions and self.written:
            return
        wkb, fields = self._features(regions)
        with native_failures(self._fail), warnings.catch_warnings():
            # A scene without georeferencing gets polygons in pixel coordinates, without a CRS, as documented.
            warnings.filterwarnings("ignore", message=".*crs.*not provided", category=UserWarning)
            raw.write(self._scratch, wkb, fields, fields=list(FIELDS), crs=_crs_text(self.crs), driver="GPKG",
                      layer="polygons", geometry_type="Polygon", append=bool(self.written))
        self.written += len(regions)

    def _fail(self, exc: BaseException, diagnostics: Sequence[str] = ()) -> DataError:
        return write_error(self.path, exc, diagnostics)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._batch.extend(self._tracker.finish())
                self._flush()
                self._publish()
        except BaseException as error:
            self._stack.__exit__(type(error), error, error.__traceback__)
            raise
        return bool(self._stack.__exit__(exc_type, exc, tb))

    def _publish(self) -> None:
        """The scratch GeoPackage becomes the final temporary in the requested format."""
        import pyogrio

        if self.fmt == "gpkg":
            os.replace(self._scratch, self._tmp)
            return
        # GDAL's FlatGeobuf driver makes a folder of a name without its extension: the format's own
        # extension on a scratch name first, then the temporary's name.
        converted = self._stack.enter_context(scratch_path(f"{self._tmp}.{self.fmt}"))
        with native_failures(self._fail), pyogrio.open_arrow(self._scratch, use_pyarrow=False) as (meta, stream):
            pyogrio.write_arrow(stream, converted, driver=FORMATS[self.fmt], layer="polygons",
                                geometry_name=meta["geometry_name"] or "geom", geometry_type="Polygon", crs=meta["crs"])
        os.replace(converted, self._tmp)


def _crs_text(crs) -> str | None:
    return None if crs is None else crs.to_wkt()
