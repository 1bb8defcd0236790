"""Polygons of a class map fed band by band: checked against the raster they come from."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin
from scipy import ndimage

from dataset.vectors import FORMATS, RegionTracker, VectorBandWriter
from tests.malloc_info import glibc_malloc, malloc_in_use
from utils.errors import DataError

FOUR = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def _class_map(height: int, width: int, classes: int = 4, seed: int = 0) -> np.ndarray:
    """Blocks of 10 px with 5% single-pixel noise: regions of every size, holes, diagonal contacts."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, classes, (height // 10 + 1, width // 10 + 1))
    out = np.kron(base, np.ones((10, 10), dtype=np.int64))[:height, :width].astype(np.uint8)
    noise = rng.random((height, width)) < 0.05
    out[noise] = rng.integers(0, classes, int(noise.sum()))
    return out


def _regions(classes: np.ndarray, keep: np.ndarray, band: int, confidence: np.ndarray | None = None):
    tracker = RegionTracker(classes.shape[1])
    found = []
    for y0 in range(0, classes.shape[0], band):
        rows = slice(y0, y0 + band)
        found += tracker.add(y0, classes[rows], None if confidence is None else confidence[rows], keep[rows])
    return found + tracker.finish()


@pytest.mark.parametrize("band", [1, 7, 37, 300])
def test_polygons_are_the_pixels_of_their_class_one_per_connected_region(band):
    classes = _class_map(300, 257)
    keep = np.ones(classes.shape, dtype=bool)
    keep[:20, :30] = False  # nodata at the scene's corner
    regions = _regions(classes, keep, band)
    for c in range(4):
        pixels = (classes == c) & keep
        mine = [r for r in regions if r.class_index == c]
        assert len(mine) == ndimage.label(pixels, structure=FOUR)[1]
        polygons = [r.polygon() for r in mine]
        assert all(p.geom_type == "Polygon" and p.is_valid for p in polygons)
        burnt = rasterize([(p, 1) for p in polygons], out_shape=classes.shape, fill=0, dtype="uint8")
        assert np.array_equal(burnt == 1, pixels)  # their union is exactly the class's pixels
        assert sum(p.area for p in polygons) == pixels.sum() == sum(r.pixels for r in mine)


def test_a_region_across_many_bands_with_a_hole_is_one_polygon():
    classes = np.zeros((60, 40), dtype=np.uint8)
    classes[10:50, 5:35] = 1  # a frame of class 1 around a hole of class 0, spanning 20 bands of 3 rows
    classes[20:40, 15:25] = 0
    classes[:, 39] = 2  # a column along the scene's right edge, from top to bottom
    confidence = np.full(classes.shape, 200, dtype=np.uint8)
    confidence[classes == 1] = 100
    regions = _regions(classes, np.ones(classes.shape, dtype=bool), 3, confidence)
    frame = [r for r in regions if r.class_index == 1]
    assert len(frame) == 1
    polygon = frame[0].polygon()
    assert len(polygon.interiors) == 1 and polygon.area == 30 * 40 - 10 * 20
    assert frame[0].confidence_sum == 100 * (30 * 40 - 10 * 20)
    edge = [r for r in regions if r.class_index == 2]
    assert len(edge) == 1 and edge[0].polygon().equals(shapely.box(39, 0, 40, 60))
    # The outside and the hole of class 0 are two regions.
    assert len([r for r in regions if r.class_index == 0]) == 2


def test_regions_are_handed_back_as_soon_as_they_are_finished():
    classes = np.zeros((40, 10), dtype=np.uint8)
    classes[2:4, 2:4] = 1  # finished after the first band
    tracker = RegionTracker(10)
    first = tracker.add(0, classes[:10], None, np.ones((10, 10), dtype=bool))
    assert [r.class_index for r in first] == [1] and tracker.open_regions == 1  # the background goes on
    assert tracker.labels_held <= 10 + tracker.open_regions  # the newest row's labels and the open roots
    with pytest.raises(ValueError, match="does not follow row 10"):
        tracker.add(20, classes[20:30], None, np.ones((10, 10), dtype=bool))


@pytest.mark.skipif(not glibc_malloc(), reason="glibc's malloc (mallinfo2) only")
def test_open_regions_hold_about_what_their_pieces_weigh_as_wkb():
    # A background spanning every band, with 3 x 3 holes of another class: it stays open to the end,
    # with one piece per band. Held as GEOS objects those pieces took about 3x what it is written as.
    classes = np.zeros((600, 2000), dtype=np.uint8)
    for r in range(2, 600, 12):
        for c in range(2, 2000, 6):
            classes[r:r + 3, c:c + 3] = 1
    keep = np.ones(classes.shape, dtype=bool)
    _regions(classes[:24, :60], keep[:24, :60], 12)  # the libraries' own first-use allocations
    tracker = RegionTracker(classes.shape[1])
    before = malloc_in_use()
    for y0 in range(0, 600, 12):
        tracker.add(y0, classes[y0:y0 + 12], None, keep[y0:y0 + 12])
    held = malloc_in_use() - before
    background = [r for r in tracker.finish() if r.class_index == 0]
    assert len(background) == 1 and len(background[0].pieces) == 50
    polygon = background[0].polygon()
    assert polygon.area == classes.size - np.count_nonzero(classes) and len(polygon.interiors) == 50 * 333
    wkb = len(shapely.to_wkb(polygon))  # what it is written as
    assert wkb > 1 << 20
    assert held < 1.25 * wkb, f"the open regions hold {held / 2**20:.1f} MB for {wkb / 2**20:.1f} MB of WKB"


def test_finished_regions_leave_memory_with_the_band_that_finishes_them(tmp_path):
    classes = np.zeros((40, 10), dtype=np.uint8)
    classes[2:4, 2:4] = 1  # finished by the first band
    classes[12:14, 5:7] = 2  # by the second
    with VectorBandWriter(str(tmp_path / "m_mask.gpkg"), _profile(height=40, width=10), ["a", "b", "c"], "gpkg") as w:
        w.write(0, classes[:10])
        assert w.written == 1  # in the scratch file, not held
        w.write(10, classes[10:20])
        assert w.written == 2
        w.write(20, classes[20:])
    assert w.written == 3  # the background, open to the end
    assert len(pyogrio.raw.read(str(tmp_path / "m_mask.gpkg"))[2]) == 3


def _profile(crs="EPSG:32633", transform=from_origin(500000, 4650000, 0.5, 0.5), height=300, width=257):
    return {"height": height, "width": width, "crs": None if crs is None else CRS.from_string(crs),
            "transform": transform}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_vector_files_in_every_format_hold_the_scene_crs_and_the_attributes(tmp_path, fmt, monkeypatch):
    import dataset.vectors

    monkeypatch.setattr(dataset.vectors, "CHUNK_PIXELS", 257 * 5)  # each 64-row band in chunks of 5 rows
    classes = _class_map(300, 257)
    valid = np.ones(classes.shape, dtype=bool)
    valid[:20, :30] = False
    confidence = ((classes.astype(np.int64) * 50 + 40) % 256).astype(np.uint8)
    path = str(tmp_path / f"s_mask.{fmt}")
    names = ["bg", "road", "water", "field"]
    with VectorBandWriter(path, _profile(), names, fmt, skip=(3,)) as writer:
        for y0 in range(0, 300, 64):
            rows = slice(y0, y0 + 64)
            writer.write(y0, classes[rows], confidence[rows], valid[rows])
    info = pyogrio.read_info(path)
    assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633)
    assert list(info["fields"]) == ["class_index", "class_name", "area", "mean_confidence"]
    _, _, geometries, fields = pyogrio.raw.read(path)
    index, name, area, mean = fields
    polygons = shapely.from_wkb(geometries)
    assert 3 not in set(index.tolist()) and set(name.tolist()) == {"bg", "road", "water"}
    expected = sum(ndimage.label((classes == c) & valid, structure=FOUR)[1] for c in range(3))
    assert len(polygons) == expected == writer.written
    assert np.allclose(area, [p.area for p in polygons]) and np.allclose(area / 0.25, np.round(area / 0.25))
    assert np.allclose(mean, (index * 50 + 40) / 255)
    # Back on the scene's grid, each class's polygons are its pixels.
    transform = _profile()["transform"]
    for c in range(3):
        burnt = rasterize([(p, 1) for p, i in zip(polygons, index) if i == c], out_shape=classes.shape,
                          transform=transform, fill=0, dtype="uint8")
        assert np.array_equal(burnt == 1, (classes == c) & valid)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"s_mask.{fmt}"]  # no scratch file left
    assert (tmp_path / f"s_mask.{fmt}").is_file()  # a file, not a folder of layers


def test_simplify_pixel_coordinates_and_empty_files(tmp_path):
    classes = np.zeros((50, 50), dtype=np.uint8)
    yy, xx = np.mgrid[:50, :50]
    classes[(yy - 25) ** 2 + (xx - 25) ** 2 < 300] = 1  # a disc: a staircase of many vertices
    exact, simple = str(tmp_path / "a.gpkg"), str(tmp_path / "b.gpkg")
    for path, tolerance in ((exact, 0.0), (simple, 1.5)):
        with VectorBandWriter(path, _profile(None, None, 50, 50), ["bg", "disc"], "gpkg", simplify=tolerance) as w:
            w.write(0, classes)
    disc, fewer = (_polygons_of(path, 1) for path in (exact, simple))
    assert disc[0].area == (classes == 1).sum()  # pixel coordinates for a scene without a transform
    assert shapely.get_num_coordinates(fewer[0]) < shapely.get_num_coordinates(disc[0]) / 2
    assert pyogrio.read_info(exact)["crs"] is None
    nothing = str(tmp_path / "none.fgb")  # every pixel left out: a valid file without features
    with VectorBandWriter(nothing, _profile(height=50, width=50), ["bg", "disc"], "fgb", skip=(0, 1)) as w:
        w.write(0, classes)
    assert len(pyogrio.raw.read(nothing)[2]) == 0 and pyogrio.read_info(nothing)["crs"] is not None


def _polygons_of(path: str, class_index: int) -> list:
    _, _, geometries, fields = pyogrio.raw.read(path)
    return [shapely.from_wkb(g) for g, i in zip(geometries, fields[0]) if i == class_index]


def test_a_scene_with_ground_control_points_is_refused(tmp_path):
    profile = {**_profile(transform=None), "gcps": ([object()], CRS.from_epsg(4326))}
    with pytest.raises(DataError, match="ground control points.*warp it first"):
        VectorBandWriter(str(tmp_path / "g.gpkg"), profile, ["a"], "gpkg")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_scene_leaves_no_vector_file(tmp_path):
    path = str(tmp_path / "s_mask.geojson")
    with pytest.raises(RuntimeError), VectorBandWriter(path, _profile(height=20, width=20), ["a"], "geojson") as w:
        w.write(0, np.zeros((10, 20), dtype=np.uint8))
        raise RuntimeError("the prediction failed")
    assert list(tmp_path.iterdir()) == []
