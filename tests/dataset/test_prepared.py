"""tools.prepare_scenes: scenes and their vector or raster labels cut into the split layout, with dataset.json."""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pytest
import rasterio

from dataset.classes import load_class_table
from dataset.prepared import PrepareOptions, assign_splits, load_prepared, pair_labels, prepare_scenes
from dataset.split_layout import SplitDataset
from dataset.synthetic_scenes import make_scenes
from utils.errors import ConfigError, DataError
from utils.labels import IGNORE_INDEX

SIZE, TILE = 256, 64
COVERED = 160  # the polygons cover the parcels ending at or before 0.7 x 256 = 179.2 px: columns < 160


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_scenes(str(tmp_path_factory.mktemp("scenes")), n_scenes=3, size=SIZE, cell=32, seed=3)


def _prepare(source, dst, **options):
    defaults = dict(tile_size=TILE, split_by="block", block_tiles=2, val=0.25, test=0.25, seed=0, class_field="class",
                    bands=(1, 2, 3))
    defaults.update(options)
    labels = options.pop("labels", None) or [source["vector"], source["raster"]]
    defaults.pop("labels", None)
    return prepare_scenes(source["scenes"], labels, load_class_table(source["classes"]), str(dst),
                          PrepareOptions(**defaults))


def _tiles(dst):
    """{tile id: (split folder, label array, image dataset path)}."""
    out = {}
    for path in glob.glob(os.path.join(str(dst), "*", "Label", "*_mask.tif")):
        split = path.split(os.sep)[-3]
        tile = os.path.basename(path)[: -len("_mask.tif")]
        with rasterio.open(path) as src:
            out[tile] = (split, src.read(1), src.transform, src.crs)
    return out


def _place(tile):
    scene, row, col = map(int, re.search(r"scene_(\d+)_r(\d+)_c(\d+)", tile).groups())
    return scene, row * TILE, col * TILE


def test_vector_and_raster_labels_land_exactly_on_the_scene_grid(source, tmp_path):
    summary = _prepare(source, tmp_path / "out")
    tiles = _tiles(tmp_path / "out")
    assert tiles and sum(c.tiles for c in summary.splits.values()) == len(tiles)
    for tile, (_split, label, transform, crs) in tiles.items():
        scene, top, left = _place(tile)
        truth = source["truth"][scene][top:top + TILE, left:left + TILE]
        if scene < 2:  # vector labels in EPSG:4326 over part of the scene
            columns = np.arange(left, left + TILE)[None, :]
            expected = np.where(columns < COVERED, truth, IGNORE_INDEX)
        else:  # a class-index raster on a 2 m grid
            expected = truth
        assert np.array_equal(label, expected), tile
        with rasterio.open(source["scenes"][scene]) as src:
            assert crs == src.crs and transform == src.transform @ rasterio.Affine.translation(left, top)
    # Tiles wholly beyond the polygons' reach hold no label and are dropped.
    assert summary.dropped == 2 * (SIZE // TILE) * 1  # the last column of tiles (192..255) of scenes 0 and 1
    image = glob.glob(os.path.join(str(tmp_path / "out"), "train", "Sat", "*_sat.tif"))[0]
    with rasterio.open(image) as src:
        assert src.count == 3 and src.colorinterp[0].name == "red" and src.dtypes[0] == "uint8"


def test_splits_share_no_pixel_and_follow_the_seed(source, tmp_path):
    _prepare(source, tmp_path / "a", seed=1)
    _prepare(source, tmp_path / "b", seed=1)
    a, b = _tiles(tmp_path / "a"), _tiles(tmp_path / "b")
    assert {t: v[0] for t, v in a.items()} == {t: v[0] for t, v in b.items()}
    # Blocks of 2 x 2 tiles: the four tiles of a block are in one split.
    blocks = {}
    for tile, (split, *_rest) in a.items():
        scene, top, left = _place(tile)
        blocks.setdefault((scene, top // (2 * TILE), left // (2 * TILE)), set()).add(split)
    assert all(len(s) == 1 for s in blocks.values())
    assert {s for v in a.values() for s in [v[0]]} == {"train", "crossvali", "offical_crossvali"}
    _prepare(source, tmp_path / "c", split_by="scene", val=0.3, test=0.3)
    by_scene = _tiles(tmp_path / "c")
    splits_of_scene = {}
    for tile, (split, *_rest) in by_scene.items():
        splits_of_scene.setdefault(_place(tile)[0], set()).add(split)
    assert sorted(len(s) for s in splits_of_scene.values()) == [1, 1, 1]
    assert len({next(iter(s)) for s in splits_of_scene.values()}) == 3


def test_assign_splits_rules():
    options = PrepareOptions(val=0.2, test=0.1, seed=5, split_by="block")
    split = assign_splits(range(20), options)
    assert sorted(split.values()).count("test") == 2 and sorted(split.values()).count("crossvali") == 4
    assert split == assign_splits(range(20), options)
    with pytest.raises(ConfigError, match="training would get none"):
        assign_splits(range(2), PrepareOptions(val=0.2, test=0.2))


def test_unlabelled_class_and_scene_nodata(source, tmp_path):
    _prepare(source, tmp_path / "out", unlabelled="bare", split_by="scene", val=0.3, test=0.3)
    for tile, (_split, label, *_rest) in _tiles(tmp_path / "out").items():
        scene, top, left = _place(tile)
        truth = source["truth"][scene][top:top + TILE, left:left + TILE]
        if scene < 2:
            columns = np.arange(left, left + TILE)[None, :]
            assert np.array_equal(label, np.where(columns < COVERED, truth, 0))
    # A scene with a nodata value: its nodata pixels are never labelled.
    nodata_scene = tmp_path / "scene_0.tif"
    with rasterio.open(source["scenes"][0]) as src:
        profile, data = src.profile, src.read()
    data[:, :10, :] = 0
    profile.update(nodata=0)
    with rasterio.open(nodata_scene, "w", **profile) as out:
        out.write(data)
    prepare_scenes([str(nodata_scene)], [source["vector"]], load_class_table(source["classes"]), str(tmp_path / "nd"),
                   PrepareOptions(tile_size=TILE, split_by="block", block_tiles=1, val=0.2, test=0.2,
                                  class_field="class", bands=(1, 2, 3), unlabelled="bare"))
    for tile, (_split, label, *_rest) in _tiles(tmp_path / "nd").items():
        _scene, top, _left = _place(tile)
        if top == 0:
            assert (label[:10] == IGNORE_INDEX).all() and (label[10:] != IGNORE_INDEX).all()


def test_a_label_raster_in_another_crs_is_reprojected(source, tmp_path):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(source["raster"]) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        moved = np.full((height, width), 0, dtype=np.uint8)
        reproject(src.read(1), moved, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs="EPSG:4326", resampling=Resampling.nearest)
        profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="uint8", crs="EPSG:4326",
                       transform=transform, nodata=None)
    labels = tmp_path / "scene_2.tif"
    with rasterio.open(labels, "w", **profile) as out:
        out.write(moved[None])
    prepare_scenes([source["scenes"][2]], [str(labels)], load_class_table(source["classes"]), str(tmp_path / "out"),
                   PrepareOptions(tile_size=TILE, split_by="block", block_tiles=1, val=0.2, test=0.2, bands=(1, 2, 3)))
    agree = total = 0
    for tile, (_split, label, *_rest) in _tiles(tmp_path / "out").items():
        _scene, top, left = _place(tile)
        truth = source["truth"][2][top:top + TILE, left:left + TILE]
        inside = label != IGNORE_INDEX
        agree += int((label[inside] == truth[inside]).sum())
        total += int(inside.sum())
    assert total > 0.9 * SIZE * SIZE and agree > 0.97 * total  # two nearest resamplings move parcel edges a pixel


def test_dataset_json_and_the_split_layout_read_the_ignore_value(source, tmp_path):
    summary = _prepare(source, tmp_path / "out")
    prepared = load_prepared(str(tmp_path / "out"))
    table = prepared.classes
    assert prepared.bands == 3 and len(prepared.mean) == 3
    assert table.names == ("bare", "crop", "sheet") and table.ignore == IGNORE_INDEX
    raw = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert raw["splits"]["train"]["tiles"] == summary.splits["train"].tiles and raw["bands"] == [1, 2, 3]
    assert raw["dropped_tiles"] == summary.dropped and len(raw["scenes"]) == 3
    items = SplitDataset(str(tmp_path / "out"), "train", labelled=True, classes=table)
    labels = np.concatenate([items[i]["label"].numpy().reshape(-1) for i in range(len(items))])
    assert (labels == IGNORE_INDEX).any() and set(np.unique(labels)) <= {0, 1, 2, IGNORE_INDEX}
    assert load_prepared(str(tmp_path)) is None


def test_rerun_replaces_the_earlier_result(source, tmp_path):
    _prepare(source, tmp_path / "out", seed=0)
    _prepare(source, tmp_path / "out", seed=7)
    again = _tiles(tmp_path / "out")
    _prepare(source, tmp_path / "fresh", seed=7)
    assert {t: v[0] for t, v in again.items()} == {t: v[0] for t, v in _tiles(tmp_path / "fresh").items()}
    assert not os.path.exists(tmp_path / "out" / ".prepare_scenes_running")


def test_bad_inputs_are_one_clear_error(source, tmp_path):
    import pyogrio
    import shapely

    classes = load_class_table(source["classes"])
    with pytest.raises(ConfigError, match="no field `kind`"):
        _prepare(source, tmp_path / "a", class_field="kind")
    with pytest.raises(ConfigError, match="need `class_field`"):
        _prepare(source, tmp_path / "b", class_field=None)
    with pytest.raises(ConfigError, match="scene .*scene_0.tif has no labels"):
        pair_labels(source["scenes"], [os.path.dirname(source["vector"])])
    far = tmp_path / "far.gpkg"
    pyogrio.raw.write(str(far), shapely.to_wkb(np.array([shapely.box(10, 10, 10.001, 10.001)], dtype=object)),
                      [np.array(["crop"], dtype=object)], fields=["class"], crs="EPSG:4326", geometry_type="Polygon",
                      driver="GPKG")
    with pytest.raises(DataError, match="do not meet"):
        _prepare(source, tmp_path / "c", labels=[str(far)])
    unknown = tmp_path / "unknown.gpkg"
    with rasterio.open(source["scenes"][0]) as src:
        west, south, east, north = src.bounds
    from rasterio.warp import transform_bounds

    box = shapely.box(*transform_bounds("EPSG:32631", "EPSG:4326", west, south, east, north))
    pyogrio.raw.write(str(unknown), shapely.to_wkb(np.array([box], dtype=object)), [np.array(["forest"], dtype=object)],
                      fields=["class"], crs="EPSG:4326", geometry_type="Polygon", driver="GPKG")
    with pytest.raises(DataError, match="no synthetic parcels class \\(first: 'forest'\\)"):
        _prepare(source, tmp_path / "d", labels=[str(unknown)])
    with pytest.raises(ConfigError, match="leaves nothing to train on"):
        _prepare(source, tmp_path / "e", val=0.5, test=0.5)
    with pytest.raises(ConfigError, match="`unlabelled` 'nope'"):
        _prepare(source, tmp_path / "f", unlabelled="nope")
    other = tmp_path / "other" / "train" / "Sat"
    other.mkdir(parents=True)
    (other / "x_sat.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="did not write"):
        _prepare(source, tmp_path / "other")
    assert classes.n_class == 3


def test_a_scene_without_crs_takes_labels_on_its_pixel_grid(tmp_path):
    from dataset.synthetic_scenes import CLASSES

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=(40, 50)).astype(np.uint8)
    scene, labels = tmp_path / "plain.tif", tmp_path / "labels" / "plain.tif"
    labels.parent.mkdir()
    with rasterio.open(scene, "w", driver="GTiff", height=40, width=50, count=3, dtype="uint8") as out:
        out.write(rng.integers(0, 255, size=(3, 40, 50)).astype(np.uint8))
    with rasterio.open(labels, "w", driver="GTiff", height=40, width=50, count=1, dtype="uint8") as out:
        out.write(truth[None])
    table_path = tmp_path / "classes.json"
    table_path.write_text(json.dumps(CLASSES))
    classes = load_class_table(str(table_path))
    options = PrepareOptions(tile_size=16, split_by="block", block_tiles=1, val=0.2, test=0.2)
    prepare_scenes([str(scene)], [str(labels.parent)], classes, str(tmp_path / "out"), options)
    for tile, (_split, label, _transform, crs) in _tiles(tmp_path / "out").items():
        row, col = map(int, re.search(r"_r(\d+)_c(\d+)", tile).groups())
        expected = np.full((16, 16), IGNORE_INDEX, dtype=np.uint8)
        part = truth[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16]
        expected[:part.shape[0], :part.shape[1]] = part
        assert crs is None and np.array_equal(label, expected)
    with rasterio.open(labels, "w", driver="GTiff", height=20, width=25, count=1, dtype="uint8") as out:
        out.write(truth[None, ::2, ::2])
    with pytest.raises(DataError, match="must lie on its pixel grid"):
        prepare_scenes([str(scene)], [str(labels.parent)], classes, str(tmp_path / "out2"), options)


@pytest.mark.parametrize(("driver", "suffix"), [("GeoJSON", ".geojson"), ("FlatGeobuf", ".fgb"),
                                                ("ESRI Shapefile", ".shp")])
def test_other_vector_formats_and_class_indices(source, tmp_path, driver, suffix):
    import pyogrio

    meta, _, wkb, (names,) = pyogrio.raw.read(source["vector"], columns=["class"])[:4]
    indices = np.array([["bare", "crop", "sheet"].index(n) for n in names], dtype=np.int32)
    path = str(tmp_path / f"labels{suffix}")
    pyogrio.raw.write(path, wkb, [indices], fields=["kind"], crs="EPSG:4326", geometry_type="Polygon", driver=driver)
    prepare_scenes(source["scenes"][:1], [path], load_class_table(source["classes"]), str(tmp_path / "out"),
                   PrepareOptions(tile_size=TILE, split_by="block", block_tiles=1, val=0.2, test=0.2,
                                  class_field="kind", bands=(1, 2, 3)))
    for tile, (_split, label, *_rest) in _tiles(tmp_path / "out").items():
        _scene, top, left = _place(tile)
        truth = source["truth"][0][top:top + TILE, left:left + TILE]
        columns = np.arange(left, left + TILE)[None, :]
        assert np.array_equal(label, np.where(columns < COVERED, truth, IGNORE_INDEX))


def test_a_band_the_scene_lacks_is_an_error_before_anything_is_written(source, tmp_path):
    with pytest.raises(DataError, match="has bands 1..4 only"):
        _prepare(source, tmp_path / "out", bands=(1, 2, 3, 5))
    assert not (tmp_path / "out").exists()


def test_label_raster_nodata_stays_ignored_while_beyond_it_becomes_the_unlabelled_class(source, tmp_path):
    with rasterio.open(source["raster"]) as src:
        coarse, profile = src.read(1), src.profile
    half = coarse[:, : coarse.shape[1] // 2].copy()  # the left half of the scene, 2 m pixels
    half[:8, :8] = 200  # nodata
    profile.update(width=half.shape[1], nodata=200)
    labels = tmp_path / "scene_2.tif"
    with rasterio.open(labels, "w", **profile) as out:
        out.write(half[None])
    prepare_scenes([source["scenes"][2]], [str(labels)], load_class_table(source["classes"]), str(tmp_path / "out"),
                   PrepareOptions(tile_size=TILE, split_by="block", block_tiles=1, val=0.2, test=0.2, bands=(1, 2, 3),
                                  unlabelled="bare"))
    truth = source["truth"][2]
    expected = np.where(np.arange(SIZE)[None, :] < SIZE // 2, truth, 0)
    expected[:16, :16] = IGNORE_INDEX  # 8 coarse pixels of 2 m: 16 scene pixels
    for tile, (_split, label, *_rest) in _tiles(tmp_path / "out").items():
        _scene, top, left = _place(tile)
        assert np.array_equal(label, expected[top:top + TILE, left:left + TILE]), tile


def test_band_statistics_match_a_direct_computation():
    from dataset.prepared import BandStatistics

    rng = np.random.default_rng(1)
    stats = BandStatistics(4)
    tiles = [rng.integers(0, 256, size=(4, 9, 7), dtype=np.uint8) for _ in range(3)]
    masks = [rng.random((9, 7)) < 0.6 for _ in range(3)]
    for tile, inside in zip(tiles, masks):
        stats.add(tile, inside)
    values = np.concatenate([tile[:, inside] for tile, inside in zip(tiles, masks)], axis=1) / 255
    mean, std = stats.mean_std()
    assert np.allclose(mean, values.mean(1), atol=1e-6) and np.allclose(std, values.std(1), atol=1e-6)
