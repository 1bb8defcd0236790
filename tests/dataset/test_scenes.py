"""Scenes of your own: input lists, windowed raster reading (bands, value ranges, nodata) and GeoTIFF writing."""

import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from dataset.classes import PALETTE
from dataset.geotiff import NODATA, GeoTiffBandWriter
from dataset.scenes import InputRange, RasterScene, expand_inputs, parse_bands
from dataset.synthetic import _raster_values, write_synthetic_raster
from utils.errors import ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


def test_inputs_from_files_folders_patterns_and_lists(tmp_path):
    a = _touch(tmp_path / "d" / "a.tif")
    b = _touch(tmp_path / "d" / "b.jpg")
    _touch(tmp_path / "d" / "notes.md")
    c = _touch(tmp_path / "e" / "c.tif")
    listing = tmp_path / "list.txt"
    listing.write_text("# scenes\n\ne/c.tif\n")
    assert expand_inputs([str(tmp_path / "d")]) == [a, b]
    assert expand_inputs([str(tmp_path / "d" / "*.tif"), str(listing)]) == [a, c]
    assert expand_inputs([a, a]) == [a]


@pytest.mark.parametrize("spec,words", [("missing.tif", "not found"), ("*.nothing", "matches no file"),
                                        ("emptydir", "holds no image")])
def test_inputs_that_name_nothing_are_errors(tmp_path, spec, words):
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match=words):
        expand_inputs([str(tmp_path / spec)])


def test_two_inputs_with_one_stem_are_an_error(tmp_path):
    with pytest.raises(DataError, match="same name a"):
        expand_inputs([_touch(tmp_path / "x" / "a.tif"), _touch(tmp_path / "y" / "a.png")])


def test_input_range_and_bands_parsing():
    assert InputRange.parse(["0,3000"]).pairs == ((0.0, 3000.0),)
    assert len(InputRange.parse(["0,1", "0,2", "0,3"]).pairs) == 3
    assert InputRange.parse(["p2,p98"]).percentiles == (2.0, 98.0)
    for bad in (["3000,0"], ["a,b"], ["0,1", "0,2"], ["p2,98"], ["p-1,p50"]):
        with pytest.raises(ConfigError, match="input_range"):
            InputRange.parse(bad)
    assert parse_bands("4,3,2") == (4, 3, 2)
    for bad in ("1,2", "0,1,2", "r,g,b"):
        with pytest.raises(ConfigError, match="bands"):
            parse_bands(bad)


def test_windows_are_boundless_and_exact(tmp_path):
    path = str(tmp_path / "s.tif")
    write_synthetic_raster(path, 300, 280, tile=64)
    values = _raster_values(0, 0, 300, 280, 3, 0).astype(np.uint8)
    with RasterScene(path) as scene:
        assert (scene.height, scene.width) == (300, 280) and not scene.has_mask
        window = scene.read(-10, 250, 40, 50)
        assert (window[:, :10] == 0).all() and (window[:, :, 30:] == 0).all()
        assert np.array_equal(window[:, 10:, :30], values[:, :30, 250:])
        assert np.array_equal(scene.read(0, 0, 300, 280), values)


def test_multi_band_scenes_use_the_first_three_or_the_chosen_bands(tmp_path, caplog):
    path = str(tmp_path / "four.tif")
    write_synthetic_raster(path, 64, 64, bands=4)
    values = _raster_values(0, 0, 64, 64, 4, 0).astype(np.uint8)
    with RasterScene(path) as scene:  # GDAL's default for 4 uint8 bands: R, G, B and alpha, declared
        assert np.array_equal(scene.read(0, 0, 64, 64), values[:3])
        assert "bands 1,2,3 as R, G, B" in scene.describe() and "masked by alpha band 4" in scene.describe()
    with RasterScene(path, bands=(4, 3, 2)) as scene:
        assert np.array_equal(scene.read(0, 0, 64, 64), values[[3, 2, 1]])
    with pytest.raises(DataError, match="bands 1..4 only"):
        RasterScene(path, bands=(1, 2, 5))


def test_an_alpha_band_read_as_data_masks_nothing(tmp_path, monkeypatch):
    """A near-infrared 4th band written with GDAL's defaults is declared alpha: read as RGB it masks (and
    the log says so); read as a 4th data band it masks nothing, with one warning, the same pixels either way."""
    import dataset.scenes

    path = str(tmp_path / "rgbn.tif")
    values = _raster_values(0, 0, 40, 50, 4, 0).astype(np.uint8)
    values[3, :20] = 0  # near-infrared 0 in the top half: "transparent" to GDAL's alpha rule
    with rasterio.open(path, "w", driver="GTiff", height=40, width=50, count=4, dtype="uint8") as dst:
        dst.write(values)
    warnings = []
    monkeypatch.setattr(dataset.scenes.log, "warning", lambda text, *args: warnings.append(text % args))
    with RasterScene(path) as rgb:
        assert rgb.has_mask and not rgb.read_valid(0, 0, 40, 50)[:20].any()
        assert "masked by alpha band 4" in rgb.describe() and warnings == []
    with RasterScene(path, bands=(1, 2, 3, 4)) as rgbn:
        assert not rgbn.has_mask and rgbn.read_valid(0, 0, 40, 50) is None
        assert np.array_equal(rgbn.read(0, 0, 40, 50), values)
        assert "masked by nothing (its alpha band is read as data)" in rgbn.describe()
    assert len(warnings) == 1 and "band 4 is declared alpha" in warnings[0]


def test_a_scene_of_fewer_than_three_bands_needs_bands(tmp_path):
    path = str(tmp_path / "grey.tif")
    write_synthetic_raster(path, 32, 32, bands=1)
    with pytest.raises(DataError, match="fewer than 3; pass `bands`"):
        RasterScene(path)
    with RasterScene(path, bands=(1, 1, 1)) as scene:
        window = scene.read(0, 0, 32, 32)
        assert np.array_equal(window[0], window[2])


def test_sixteen_bit_scenes_need_a_range_and_map_linearly(tmp_path):
    path = str(tmp_path / "u16.tif")
    write_synthetic_raster(path, 64, 80, dtype="uint16")
    with pytest.raises(DataError, match="uint16 pixels; pass `input_range`"):
        RasterScene(path)
    raw = _raster_values(0, 0, 64, 80, 3, 0) * 40
    with RasterScene(path, input_range=InputRange.parse(["0,5000"])) as scene:
        expected = np.rint(np.clip(raw / 5000 * 255, 0, 255)).astype(np.uint8)
        assert np.abs(scene.read(0, 0, 64, 80).astype(int) - expected).max() <= 1
    with RasterScene(path, input_range=InputRange.parse(["p0,p100"])) as scene:
        window = scene.read(0, 0, 64, 80)
        # The minimum of each band maps to 0 and its maximum to 255.
        assert (window.reshape(3, -1).min(1) == 0).all() and (window.reshape(3, -1).max(1) == 255).all()


def test_percentiles_of_a_float_scene_skip_nodata(tmp_path):
    path = str(tmp_path / "f.tif")
    write_synthetic_raster(path, 64, 64, dtype="float32", nodata=-9999.0, nodata_box=(0, 0, 32, 64))
    with RasterScene(path, input_range=InputRange.parse(["p0,p100"])) as scene:
        valid_raw = _raster_values(32, 0, 32, 64, 3, 0) * 0.01
        low, high = scene._scale[0]
        assert abs(low - valid_raw[0].min()) < 1e-3 and abs(high - valid_raw[0].max()) < 1e-3
        assert scene.has_mask


def test_nodata_pixels_are_black_and_marked(tmp_path):
    path = str(tmp_path / "nd.tif")
    write_synthetic_raster(path, 64, 64, nodata=0, nodata_box=(10, 20, 30, 40))
    with RasterScene(path) as scene:
        valid = scene.read_valid(0, 0, 70, 64)
        assert not valid[10:30, 20:40].any() and valid[:10].all() and not valid[64:].any()
        assert (scene.read(0, 0, 64, 64)[:, 10:30, 20:40] == 0).all()
    write_synthetic_raster(path, 16, 16)
    with RasterScene(path) as scene:
        assert scene.read_valid(0, 0, 16, 16) is None


def test_unreadable_and_unsupported_files_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match="not readable by GDAL"):
        RasterScene(str(broken))
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        RasterScene(str(tmp_path / "empty.tif"))
    complex_path = str(tmp_path / "c.tif")
    with rasterio.open(complex_path, "w", driver="GTiff", height=8, width=8, count=3, dtype="complex64") as dst:
        dst.write(np.ones((3, 8, 8), np.complex64))
    with pytest.raises(DataError, match="complex64 pixels, which are not supported"):
        RasterScene(complex_path)


def test_truncated_scene_fails_when_the_damaged_block_is_read(tmp_path):
    path = tmp_path / "t.tif"
    write_synthetic_raster(str(path), 512, 512, tile=128)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="damaged or truncated|not readable"):
        with RasterScene(str(path)) as scene:
            scene.read(0, 0, 512, 512)


def _write(path, rows, profile, **options):
    with GeoTiffBandWriter(path, profile, palette=PALETTE, **options) as writer:
        for start in range(0, profile["height"], 37):
            writer.write(rows[start:start + 37])


def test_geotiff_masks_keep_crs_transform_and_palette(tmp_path):
    scene = str(tmp_path / "s.tif")
    write_synthetic_raster(scene, 700, 600)
    rows = (np.arange(700 * 600) % 7).astype(np.uint8).reshape(700, 600)
    with RasterScene(scene) as opened:
        profile = opened.profile()
    out = str(tmp_path / "m.tif")
    _write(out, rows, profile, nodata=NODATA)
    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        assert dst.count == 1 and dst.dtypes[0] == "uint8" and dst.nodata == NODATA
        assert dst.profile["tiled"] and dst.compression.name.lower() == "deflate"
        assert np.array_equal(dst.read(1), rows)
        table = dst.colormap(1)
        assert all(table[i][:3] == tuple(PALETTE[i]) for i in range(7))
    assert os.listdir(tmp_path) == sorted(os.listdir(tmp_path)) and len(os.listdir(tmp_path)) == 2


def test_cog_output_has_overviews(tmp_path):
    rows = np.zeros((1500, 1200), np.uint8)
    rows[:, 600:] = 3
    profile = {"height": 1500, "width": 1200, "crs": "EPSG:32633",
               "transform": rasterio.transform.from_origin(100, 200, 1, 1)}
    out = str(tmp_path / "m.tif")
    _write(out, rows, profile, cog=True)
    with rasterio.open(out) as dst:
        assert dst.overviews(1) and np.array_equal(dst.read(1), rows)
        assert dst.colormap(1)[3][:3] == tuple(PALETTE[3])
    assert sorted(os.listdir(tmp_path)) == ["m.tif"]


def test_a_failed_write_leaves_no_file(tmp_path):
    profile = {"height": 100, "width": 80, "crs": None, "transform": None}
    with pytest.raises(RuntimeError):
        with GeoTiffBandWriter(str(tmp_path / "m.tif"), profile, palette=PALETTE) as writer:
            writer.write(np.zeros((50, 80), np.uint8))
            raise RuntimeError("stopped")
    with pytest.raises(ValueError, match="only 50 of 100 rows"):
        with GeoTiffBandWriter(str(tmp_path / "m.tif"), profile, palette=PALETTE) as writer:
            writer.write(np.zeros((50, 80), np.uint8))
    assert os.listdir(tmp_path) == []


def test_four_bands_are_read_in_the_given_order_with_one_range_per_band(tmp_path):
    import rasterio

    from dataset.io import read_bands
    from utils.errors import DataError

    assert parse_bands("1,2,3,4") == (1, 2, 3, 4)
    data = np.stack([np.full((20, 30), v, dtype=np.uint16) for v in (100, 200, 300, 400)])
    path = str(tmp_path / "four.tif")
    with rasterio.open(path, "w", driver="GTiff", height=20, width=30, count=4, dtype="uint16",
                       photometric="MINISBLACK") as out:
        out.write(data)
    ranges = InputRange.parse(["0,400", "0,400", "0,400", "0,800"])
    with RasterScene(path, (4, 1, 2, 3), ranges) as scene:
        window = scene.read(-2, 0, 10, 10)
        assert scene.channels == 4 and window.shape == (4, 10, 10) and (window[:, :2] == 0).all()
        assert window[:, 5, 5].tolist() == [255, 64, 128, 96]  # 400/400, 100/400, 200/400, 300/800 of 255
    with pytest.raises(ConfigError, match="3 pairs for 4 bands"):
        RasterScene(path, (1, 2, 3, 4), InputRange.parse(["0,1", "0,1", "0,1"]))
    with pytest.raises(DataError, match="reads 5 uint8 bands"):
        read_bands(path, 5)


def test_scene_reading_gives_a_model_its_bands():
    from engine.scenes import SceneReading

    assert SceneReading().bands_for(3) is None and SceneReading().bands_for(4) == (1, 2, 3, 4)
    assert SceneReading((4, 3, 2, 1)).bands_for(4) == (4, 3, 2, 1)
    with pytest.raises(ConfigError, match="names 3 bands .* the model reads 4"):
        SceneReading((1, 2, 3)).bands_for(4)


@pytest.mark.parametrize("readers", [None, 0, 2])
def test_scene_reading_sets_the_threads_that_read_ahead(tmp_path, readers):
    import torch

    from engine.scenes import READERS, SceneReading, open_scene
    from pipeline.config import PipelineConfig
    from pipeline.predictor import Predictor
    from tools.stand_in import StandIn

    path = str(tmp_path / "scene.tif")
    write_synthetic_raster(path, 90, 110, tile=64)
    predictor = Predictor(StandIn(1).eval(), PipelineConfig(size_p=64, size_g=48))
    with open_scene(path, SceneReading(readers=readers), predictor, torch.device("cpu")) as (source, _, _):
        assert source.readers == (READERS if readers is None else readers)
        whole = source.window(0, 0, 90, 110)
    with rasterio.open(path) as raster:
        assert np.array_equal(whole.numpy(), raster.read((1, 2, 3)))
    with pytest.raises(ConfigError, match="readers"):
        SceneReading(readers=-1)


def test_declared_colours_choose_the_default_bands_and_gcps_rpcs_are_kept(tmp_path, caplog):
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.enums import ColorInterp
    from rasterio.rpc import RPC

    values = np.stack([np.full((16, 20), v, dtype=np.uint8) for v in (10, 20, 30, 40)])
    bgrn = str(tmp_path / "bgrn.tif")
    gcps = [GroundControlPoint(0, 0, 500000, 5400000), GroundControlPoint(0, 20, 500020, 5400000),
            GroundControlPoint(16, 0, 500000, 5399984)]
    with rasterio.open(bgrn, "w", driver="GTiff", height=16, width=20, count=4, dtype="uint8",
                       photometric="MINISBLACK", gcps=gcps, crs="EPSG:32631") as out:
        out.write(values)
        out.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    with RasterScene(bgrn) as scene:
        assert scene.bands == (3, 2, 1) and scene.read(0, 0, 1, 1)[:, 0, 0].tolist() == [30, 20, 10]
        assert "3 ground control points" in scene.describe() and "nothing (every pixel valid)" in scene.describe()
        assert scene.profile()["gcps"][1].to_string() == "EPSG:32631" and len(scene.profile()["gcps"][0]) == 3
    assert "none declared" not in caplog.text
    plain = str(tmp_path / "plain.tif")
    rpc = RPC(height_off=0, height_scale=1, lat_off=48, lat_scale=1, long_off=3, long_scale=1, line_off=8,
              line_scale=8, samp_off=10, samp_scale=10, line_num_coeff=[0, 0, -1] + [0] * 17,
              line_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)
    with rasterio.open(plain, "w", driver="GTiff", height=16, width=20, count=4, dtype="uint8",
                       photometric="MINISBLACK", rpcs=rpc) as out:
        out.write(values)
    with RasterScene(plain) as scene:
        assert scene.bands == (1, 2, 3) and scene.profile()["rpcs"].lat_off == 48 and "RPCs" in scene.describe()
    assert "none declared red, green and blue" in caplog.text


def test_remote_inputs_pass_through_with_their_stems(tmp_path):
    from dataset.scenes import is_remote, stem_of, uses_pillow

    listing = tmp_path / "list.txt"
    (tmp_path / "z.zip").write_bytes(b"PK")  # a local archive must exist; what is inside is GDAL's to read
    listing.write_text("https://example.org/a/scene_1.tif?sig=x\ns3://bucket/dir/scene_2.tif\n"
                       f"/vsizip/{tmp_path}/z.zip/scene_3.tif\n")
    found = expand_inputs([str(listing), "gs://b/scene_4.jp2"])
    assert found == ["https://example.org/a/scene_1.tif?sig=x", "s3://bucket/dir/scene_2.tif",
                     f"/vsizip/{tmp_path}/z.zip/scene_3.tif", "gs://b/scene_4.jp2"]
    assert [stem_of(f) for f in found] == ["scene_1", "scene_2", "scene_3", "scene_4"]
    assert all(is_remote(f) for f in found) and not uses_pillow("https://example.org/x.png")
    with pytest.raises(DataError, match="have the same name x"):
        expand_inputs(["https://a.org/x.tif", "s3://b/x.tif"])


_READ_TWICE = """
import sys
from dataset.scenes import RasterScene
with RasterScene(sys.argv[1]) as scene:
    for _ in range(2):
        for top in range(0, scene.height, 256):
            for left in range(0, scene.width, 256):
                scene.read(top, left, 256, 256)
"""


@pytest.mark.parametrize("user_bytes", [None, 1 << 20])
def test_remote_blocks_are_read_again_from_gdals_network_cache(tmp_path, user_bytes):
    """A remote scene read twice is fetched once (GDAL's download cache is raised before the first remote
    scene), unless the user set a cache too small for it, which is respected."""
    from tools.range_server import serve

    (tmp_path / "served").mkdir()
    write_synthetic_raster(str(tmp_path / "served" / "s.tif"), 1024, 1024, tile=256, noise=24)
    assert os.path.getsize(tmp_path / "served" / "s.tif") > 2 << 20
    env = {k: v for k, v in os.environ.items() if k != "CPL_VSIL_CURL_CACHE_SIZE"}
    if user_bytes:
        env["CPL_VSIL_CURL_CACHE_SIZE"] = str(user_bytes)
    with serve(str(tmp_path / "served")) as (url, requests):
        subprocess.run([sys.executable, "-c", _READ_TWICE, f"{url}/s.tif"], check=True, env=env, cwd=ROOT)
    fetched = sum(int(r[2].split("-")[1]) - int(r[2].split("=")[1].split("-")[0]) + 1
                  for r in requests if r[0] == "GET" and r[2])
    size = os.path.getsize(tmp_path / "served" / "s.tif")
    if user_bytes is None:
        assert fetched < 1.2 * size
    else:
        assert fetched > 1.8 * size


def test_the_network_cache_size_is_ours_unless_chosen(monkeypatch):
    from rasterio._env import del_gdal_config  # rasterio.env has no public way to unset an option
    from rasterio.env import get_gdal_config, set_gdal_config

    from dataset.scenes import REMOTE_CACHE_BYTES, network_cache_bytes

    previous = get_gdal_config("CPL_VSIL_CURL_CACHE_SIZE")
    try:
        monkeypatch.setenv("CPL_VSIL_CURL_CACHE_SIZE", "5000000")
        assert network_cache_bytes() == 5000000
        monkeypatch.setenv("CPL_VSIL_CURL_CACHE_SIZE", "lots")
        with pytest.raises(ConfigError, match="CPL_VSIL_CURL_CACHE_SIZE='lots' is no number"):
            network_cache_bytes()
        monkeypatch.delenv("CPL_VSIL_CURL_CACHE_SIZE")
        del_gdal_config("CPL_VSIL_CURL_CACHE_SIZE")
        assert network_cache_bytes() == REMOTE_CACHE_BYTES
        assert int(get_gdal_config("CPL_VSIL_CURL_CACHE_SIZE")) == REMOTE_CACHE_BYTES
    finally:
        if previous is None:
            del_gdal_config("CPL_VSIL_CURL_CACHE_SIZE")
        else:
            set_gdal_config("CPL_VSIL_CURL_CACHE_SIZE", previous)
