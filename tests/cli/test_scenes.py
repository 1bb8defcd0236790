"""``train_deep_globe.py --input``: own scenes in, GeoTIFF/PNG masks out, and every bad input one error line."""

import os

import numpy as np
import pytest
import rasterio
from PIL import Image

from dataset.classes import PALETTE
from dataset.synthetic import _raster_values, write_synthetic_raster
from tests.cli.helpers import list_files, run_cli


def _args(pre_folder, out, logs, *extra):
    return ["--mode", "1", "--backbone", "fpn_resnet18", "--model_path", pre_folder, "--pre_path", "pre.pth",
            "--size_p", "64", "--size_g", "64", "--sub_batch_size", "8", "--device", "cpu", "--no_pretrained",
            "--prediction_path", str(out), "--log_path", str(logs), *extra]


@pytest.fixture
def scene(tmp_path):
    path = str(tmp_path / "in" / "scene.tif")
    os.makedirs(os.path.dirname(path))
    write_synthetic_raster(path, 150, 170, bands=4, tile=64, nodata=0, nodata_box=(0, 0, 20, 30))
    return path


def test_geotiff_in_geotiff_out_with_confidence_and_preview(fpn_pre_folder, tmp_path, scene, capsys):
    out = tmp_path / "out"
    code = run_cli(*_args(fpn_pre_folder, out, tmp_path / "logs", "--input", scene, "--no_tta", "--save_confidence",
                          "--quicklook"))
    assert code == 0
    assert list_files(out) == ["scene_confidence.tif", "scene_mask.tif", "scene_preview.png"]
    with rasterio.open(scene) as src, rasterio.open(out / "scene_mask.tif") as mask:
        assert mask.crs == src.crs and mask.transform == src.transform and mask.shape == src.shape
        assert mask.colormap(1)[1][:3] == tuple(PALETTE[1])
        classes = mask.read(1)
        assert (classes[:20, :30] == 255).all() and mask.nodata == 255
        assert classes[20:].max() < 7
    with rasterio.open(out / "scene_confidence.tif") as confidence:
        values = confidence.read(1)
        assert (values[:20, :30] == 0).all() and values[20:].min() >= 255 // 7
    assert Image.open(out / "scene_preview.png").size == (340, 150)
    assert "predicted 1 scenes" in capsys.readouterr().err


def test_the_heap_freed_by_each_band_is_given_back_before_the_next(fpn_pre_folder, tmp_path, scene, monkeypatch):
    import engine.scenes

    calls = []
    write_band = engine.scenes._write_band
    monkeypatch.setattr(engine.scenes, "_write_band", lambda *a: calls.append("band") or write_band(*a))
    monkeypatch.setattr(engine.scenes, "give_back_heap", lambda: calls.append("trim"))
    assert run_cli(*_args(fpn_pre_folder, tmp_path / "out", tmp_path / "logs", "--input", scene, "--no_tta")) == 0
    assert len(calls) > 2 and calls == ["band", "trim"] * (len(calls) // 2)


@pytest.mark.slow  # two full CLI prediction runs
def test_windowed_geotiff_gives_the_mask_of_the_same_pixels_as_png(fpn_pre_folder, tmp_path):
    tif = str(tmp_path / "a.tif")
    write_synthetic_raster(tif, 140, 190, tile=64)
    png = tmp_path / "b.png"
    Image.fromarray(np.ascontiguousarray(_raster_values(0, 0, 140, 190, 3, 0).astype(np.uint8).transpose(1, 2, 0))).save(png)
    out = tmp_path / "out"
    assert run_cli(*_args(fpn_pre_folder, out, tmp_path / "logs", "--input", tif, str(png))) == 0  # TTA on
    with rasterio.open(out / "a_mask.tif") as mask:
        windowed = mask.read(1)
    colours = np.array(Image.open(out / "b_mask.png").convert("RGB"))
    assert np.array_equal(PALETTE[windowed], colours)


def test_skip_existing_resumes_a_batch(fpn_pre_folder, tmp_path, scene, capsys):
    out = tmp_path / "out"
    args = _args(fpn_pre_folder, out, tmp_path / "logs", "--input", os.path.dirname(scene), "--no_tta",
                 "--skip_existing")
    assert run_cli(*args) == 0
    stamp = os.stat(out / "scene_mask.tif").st_mtime_ns
    assert run_cli(*args) == 0
    assert os.stat(out / "scene_mask.tif").st_mtime_ns == stamp
    assert "1 already done" in capsys.readouterr().err


def _error_of(capsys, code):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def _bad_scenes(tmp_path):
    grey = str(tmp_path / "grey.tif")
    write_synthetic_raster(grey, 80, 80, bands=1)
    u16 = str(tmp_path / "u16.tif")
    write_synthetic_raster(u16, 80, 80, dtype="uint16")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    return {"grey": grey, "u16": u16, "broken": str(broken)}


@pytest.mark.parametrize("case,extra,words", [
    ("missing", ["--input", "{tmp}/nope.tif"], "nope.tif not found"),
    ("grey", ["--input", "{grey}"], "grey.tif has 1 band, fewer than 3; pass --bands"),
    ("band", ["--input", "{grey}", "--bands", "1,1,2"], "grey.tif has bands 1..1 only"),
    ("dtype", ["--input", "{u16}"], "u16.tif has uint16 pixels; pass --input_range"),
    ("broken", ["--input", "{broken}"], "broken.tif is not readable by GDAL"),
    ("range", ["--input", "{u16}", "--input_range", "5,1"], "--input_range '5,1' needs finite LOW < HIGH"),
    ("only_input", ["--quicklook"], "--quicklook applies to --input scenes only"),
    ("with_train", ["--input", "{grey}", "--train"], "--input predicts unlabelled scenes"),
])
def test_bad_inputs_are_one_error_line_and_write_nothing(fpn_pre_folder, tmp_path, capsys, case, extra, words):
    names = {**_bad_scenes(tmp_path), "tmp": str(tmp_path)}
    out = tmp_path / "out"
    code = run_cli(*_args(fpn_pre_folder, out, tmp_path / "logs", *[e.format(**names) for e in extra]))
    assert words in _error_of(capsys, code)
    assert list_files(out) == []


def test_same_stem_and_unwritable_folder(fpn_pre_folder, tmp_path, scene, capsys):
    other = tmp_path / "other"
    other.mkdir()
    write_synthetic_raster(str(other / "scene.tif"), 64, 64)
    code = run_cli(*_args(fpn_pre_folder, tmp_path / "out", tmp_path / "logs", "--input", scene, str(other / "scene.tif")))
    assert "have the same name scene" in _error_of(capsys, code)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    code = run_cli(*_args(fpn_pre_folder, blocked, tmp_path / "logs", "--input", scene))
    assert "--prediction_path" in _error_of(capsys, code)


@pytest.mark.parametrize("cog", [False, True])
def test_ground_control_points_and_rpcs_stay_with_the_outputs(fpn_pre_folder, tmp_path, cog, capsys):
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC

    values = np.random.default_rng(0).integers(0, 256, size=(3, 90, 100), dtype=np.uint8)
    gcps = [GroundControlPoint(0, 0, 500000, 5400000), GroundControlPoint(0, 100, 500100, 5400000),
            GroundControlPoint(90, 0, 500000, 5399910)]
    rpc = RPC(height_off=0, height_scale=1, lat_off=48, lat_scale=1, long_off=3, long_scale=1, line_off=45,
              line_scale=45, samp_off=50, samp_scale=50, line_num_coeff=[0, 0, -1] + [0] * 17,
              line_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)
    os.makedirs(tmp_path / "in")
    with rasterio.open(tmp_path / "in" / "gcp.tif", "w", driver="GTiff", height=90, width=100, count=3,
                       dtype="uint8", gcps=gcps, crs="EPSG:32631") as out:
        out.write(values)
    with rasterio.open(tmp_path / "in" / "rpc.tif", "w", driver="GTiff", height=90, width=100, count=3,
                       dtype="uint8", rpcs=rpc) as out:
        out.write(values)
    out = tmp_path / "out"
    extra = ["--cog"] if cog else []
    assert run_cli(*_args(fpn_pre_folder, out, tmp_path / "logs", "--input", str(tmp_path / "in"), "--no_tta",
                          "--save_confidence", *extra)) == 0
    for name in ("gcp_mask.tif", "gcp_confidence.tif"):
        with rasterio.open(out / name) as result:
            points, crs = result.gcps
            assert crs.to_string() == "EPSG:32631" and [(p.row, p.col, p.x, p.y) for p in points] == \
                [(p.row, p.col, p.x, p.y) for p in gcps]
    for name in ("rpc_mask.tif", "rpc_confidence.tif"):
        with rasterio.open(out / name) as result:
            assert result.rpcs is not None and result.rpcs.lat_off == 48 and result.rpcs.samp_scale == 50
    if not cog:  # polygons need a transform: one line, and no file of the scene is written
        for name in ("gcp", "rpc"):
            bare = tmp_path / f"vector_{name}"
            code = run_cli(*_args(fpn_pre_folder, bare, tmp_path / "logs", "--input", str(tmp_path / "in" / f"{name}.tif"),
                                  "--no_tta", "--vectorize", "gpkg"))
            assert "warp it first" in _error_of(capsys, code) and list_files(bare) == []


def test_polygons_next_to_the_mask_are_its_pixels(fpn_pre_folder, tmp_path, scene, capsys):
    """--vectorize: the polygons, burnt back on the scene's grid, are the mask (nodata left out); the
    file counts for --skip_existing."""
    import pyogrio
    import shapely
    from rasterio.features import rasterize

    out = tmp_path / "out"
    args = _args(fpn_pre_folder, out, tmp_path / "logs", "--input", scene, "--no_tta", "--vectorize", "fgb",
                 "--skip_existing")
    assert run_cli(*args) == 0
    assert list_files(out) == ["scene_mask.fgb", "scene_mask.tif"]
    with rasterio.open(out / "scene_mask.tif") as mask:
        classes, transform, crs = mask.read(1), mask.transform, mask.crs
    _, _, geometries, (index, names, area, mean) = pyogrio.raw.read(out / "scene_mask.fgb")
    assert rasterio.crs.CRS.from_user_input(pyogrio.read_info(out / "scene_mask.fgb")["crs"]) == crs
    polygons = shapely.from_wkb(geometries)
    burnt = rasterize([(p, int(i)) for p, i in zip(polygons, index)], out_shape=classes.shape, transform=transform,
                      fill=255, dtype="uint8")
    assert np.array_equal(burnt, classes)  # every class pixel covered once, nodata (255) by none
    assert ((mean > 0) & (mean <= 1)).all() and np.allclose(area, [p.area for p in polygons])
    capsys.readouterr()
    assert run_cli(*args) == 0 and "1 already done" in capsys.readouterr().err
    # Without --vectorize its options are refused, and the unscored class must exist to be skipped.
    table = tmp_path / "two.json"
    table.write_text('{"name": "two", "classes": [{"name": "a", "colour": [0, 0, 0]}, {"name": "b", "colour": [9, 9, 9]}]}')
    for extra, words in ((["--simplify", "2"], "--simplify applies to --vectorize"),
                         (["--vectorize", "gpkg", "--simplify", "-1"], "--simplify -1.0 must be a tolerance"),
                         (["--vectorize", "gpkg", "--vector_skip", "unscored", "--dataset", "custom", "--classes",
                           str(table)], "the class table two has no unscored class")):
        code = run_cli(*_args(fpn_pre_folder, tmp_path / "o2", tmp_path / "logs", "--input", scene, *extra))
        assert words in _error_of(capsys, code)


def test_class_probabilities_one_band_per_class_next_to_the_same_mask(fpn_pre_folder, tmp_path, scene):
    plain, both = tmp_path / "plain", tmp_path / "both"
    assert run_cli(*_args(fpn_pre_folder, plain, tmp_path / "logs", "--input", scene, "--no_tta",
                          "--save_confidence")) == 0
    assert run_cli(*_args(fpn_pre_folder, both, tmp_path / "logs", "--input", scene, "--no_tta", "--save_confidence",
                          "--save_probabilities", "--cog")) == 0
    assert list_files(both) == ["scene_confidence.tif", "scene_mask.tif", "scene_probabilities.tif"]
    with rasterio.open(plain / "scene_mask.tif") as a, rasterio.open(both / "scene_mask.tif") as b:
        mask = a.read(1)
        assert np.array_equal(mask, b.read(1))
    with rasterio.open(plain / "scene_confidence.tif") as a, rasterio.open(both / "scene_confidence.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))
    with rasterio.open(both / "scene_probabilities.tif") as probs, rasterio.open(scene) as src:
        assert probs.count == 7 and probs.descriptions[1] == "urban" and probs.crs == src.crs
        assert probs.transform == src.transform and probs.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        values = probs.read().astype(int)
    valid = mask != 255
    assert (values[:, ~valid] == 0).all()
    assert (np.abs(values[:, valid].sum(axis=0) - 255) <= 7).all()
    # The mask's class has the largest probability (rounding may tie it with another class).
    of_mask = np.take_along_axis(values, np.where(valid, mask, 0)[None].astype(int), axis=0)[0]
    assert np.array_equal(of_mask[valid], values.max(axis=0)[valid])


def test_remote_scenes_over_http_and_s3_give_the_masks_of_the_file(fpn_pre_folder, tmp_path, scene, monkeypatch,
                                                                   capsys):
    from tools.range_server import serve

    bucket = tmp_path / "served" / "bucket"
    os.makedirs(bucket)
    with open(scene, "rb") as source, open(bucket / "remote.tif", "wb") as copy:
        copy.write(source.read())
    local = tmp_path / "local"
    assert run_cli(*_args(fpn_pre_folder, local, tmp_path / "logs", "--input", str(bucket / "remote.tif"),
                          "--no_tta")) == 0
    with rasterio.open(local / "remote_mask.tif") as mask:
        expected = mask.read(1)
    with serve(str(tmp_path / "served")) as (url, requests):
        monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
        over_http = tmp_path / "http"
        assert run_cli(*_args(fpn_pre_folder, over_http, tmp_path / "logs", "--input",
                              f"{url}/bucket/remote.tif?token=abc", "--no_tta")) == 0
        assert any(r[2] for r in requests)  # read with range requests, not whole
        monkeypatch.setenv("AWS_S3_ENDPOINT", url.removeprefix("http://"))
        monkeypatch.setenv("AWS_HTTPS", "NO")
        monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
        monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
        over_s3 = tmp_path / "s3"
        assert run_cli(*_args(fpn_pre_folder, over_s3, tmp_path / "logs", "--input", "s3://bucket/remote.tif",
                              "--no_tta")) == 0
        capsys.readouterr()
        assert run_cli(*_args(fpn_pre_folder, tmp_path / "missing", tmp_path / "logs", "--input",
                              f"{url}/bucket/absent.tif", "--no_tta")) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: remote scene http://127.0.0.1")
    for folder in (over_http, over_s3):
        with rasterio.open(folder / "remote_mask.tif") as mask:
            assert np.array_equal(mask.read(1), expected)


def test_the_log_says_which_bands_are_read_and_how_much_is_masked(fpn_pre_folder, tmp_path, scene):
    assert run_cli(*_args(fpn_pre_folder, tmp_path / "out", tmp_path / "logs", "--input", scene, "--no_tta")) == 0
    logs = sorted((tmp_path / "logs").rglob("*.log"))
    text = "\n".join(path.read_text(encoding="utf-8") for path in logs)
    # The fixture's scene: 4 uint8 bands (GDAL: R, G, B, alpha) with a nodata value and a 20 x 30 nodata box.
    assert "bands 1,2,3 as R, G, B" in text and "masked by nodata value 0" in text
    assert f"{100 * 20 * 30 / (150 * 170):.2f}% of the scene masked (nodata value 0)" in text


def _checksums(folder) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_rerun_into_the_input_folder_never_reads_or_replaces_its_own_files(fpn_pre_folder, tmp_path, scene,
                                                                            capsys):
    folder = tmp_path / "in"  # the scene's folder, used as the output folder too
    args = _args(fpn_pre_folder, folder, tmp_path / "logs", "--input", str(folder), "--no_tta", "--save_confidence")
    assert run_cli(*args) == 0
    assert list_files(folder) == ["scene.tif", "scene_confidence.tif", "scene_mask.tif"]
    before = _checksums(folder)
    assert run_cli(*args) == 0  # the outputs in the folder are no scenes: only scene.tif is predicted again
    assert list_files(folder) == ["scene.tif", "scene_confidence.tif", "scene_mask.tif"]
    assert _checksums(folder)["scene.tif"] == before["scene.tif"]
    logs = "\n".join(p.read_text(encoding="utf-8") for p in sorted((tmp_path / "logs").rglob("*.log")))
    assert "left out 2 file(s)" in logs
    # An explicit collision: the mask of a.tif would replace the input a_mask.tif.
    with rasterio.open(scene) as src:
        profile, data = src.profile, src.read()
    for name in ("a.tif", "a_mask.tif"):
        with rasterio.open(tmp_path / name, "w", **profile) as out:
            out.write(data)
    sums = _checksums(tmp_path)
    capsys.readouterr()
    code = run_cli(*_args(fpn_pre_folder, tmp_path, tmp_path / "logs", "--input", str(tmp_path / "a.tif"),
                          str(tmp_path / "a_mask.tif"), "--no_tta"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: the output ") and "would replace the input" in err[-1]
    assert _checksums(tmp_path) == sums


def test_a_latin1_list_of_scenes_is_read(tmp_path):
    from dataset.scenes import expand_inputs

    scene = tmp_path / "café.tif"
    scene.write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_bytes("# scènes\ncafé.tif\n".encode("latin-1"))
    assert expand_inputs([str(listing)]) == [str(scene)]


def test_lists_and_names_as_users_save_and_type_them(tmp_path):
    """UTF-16 lists (Notepad's "Unicode"), file names holding glob characters, nested lists, local
    archives that do not exist, and folders holding only output-like names."""
    from dataset.scenes import expand_inputs
    from utils.errors import DataError

    odd = tmp_path / "scene[1].tif"
    odd.write_bytes(b"x")
    plain = tmp_path / "b.tif"
    plain.write_bytes(b"x")
    assert expand_inputs([str(odd)]) == [str(odd)]  # the file itself, not the pattern "scene1.tif"
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeff# scènes\r\nscene[1].tif\r\nb.tif\r\n".encode("utf-16-le"))
    assert expand_inputs([str(listing)]) == [str(odd), str(plain)]
    (tmp_path / "bare.txt").write_bytes("b.tif\n".encode("utf-16-le"))  # no byte-order mark
    with pytest.raises(DataError, match="UTF-16 without a byte-order mark; save it as UTF-8"):
        expand_inputs([str(tmp_path / "bare.txt")])
    (tmp_path / "outer.txt").write_text("list.txt\n")
    with pytest.raises(DataError, match="names another list"):
        expand_inputs([str(tmp_path / "outer.txt")])
    with pytest.raises(DataError, match=f"the archive {tmp_path}/none.zip does not exist"):
        expand_inputs([f"/vsizip/{tmp_path}/none.zip/a.tif"])
    outputs = tmp_path / "outs"
    outputs.mkdir()
    (outputs / "field_mask.tif").write_bytes(b"x")
    with pytest.raises(DataError, match="holds only files named like this tool's outputs.*name such a file on its own"):
        expand_inputs([str(outputs)], skip=lambda p: p.endswith("_mask.tif"))
