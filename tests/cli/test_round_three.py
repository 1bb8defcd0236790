"""Reliability, round three, through the real entry point: scene forms users really type (paletted
rasters, VRTs, float scenes with NaN nodata) and native diagnostics (libtiff, GDAL, numpy) that must
never reach the terminal around the one ``error:`` line.

Where what is printed matters, the command runs as a real process: libtiff writes on file descriptor 2
itself, which an in-process run cannot see."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from dataset.synthetic import write_synthetic_raster
from tests.cli.helpers import list_files, run_cli
from tests.cli.test_reliability import ROOT, assert_one_error_line, cli, in_small_tmpfs, needs_namespace

RAW_MARKERS = ("Traceback", "Warning:", "_tiff", "TIFF", "ERROR 1", "RuntimeWarning")


def _args(pre_folder, out, logs, *extra: str) -> list[str]:
    return ["--mode", "1", "--backbone", "fpn_resnet18", "--model_path", str(pre_folder), "--pre_path", "pre.pth",
            "--size_p", "64", "--size_g", "64", "--sub_batch_size", "8", "--device", "cpu", "--no_pretrained",
            "--no_tta", "--prediction_path", str(out), "--log_path", str(logs), *extra]


def _checksums(*paths: pathlib.Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _no_raw_diagnostics(stderr: str) -> None:
    for line in stderr.splitlines():
        assert not any(marker in line for marker in RAW_MARKERS), stderr[-3000:]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


# --- paletted single-band scenes ---------------------------------------------------------------------

def _colour_table():
    rng = np.random.default_rng(3)
    return {i: (*map(int, rng.integers(0, 256, 3)), 255) for i in range(256)}


def test_a_paletted_scene_is_read_as_the_colours_it_shows(fpn_pre_folder, tmp_path, capsys):
    """A single band with a colour table gives the mask of the same scene stored as RGB."""
    table = _colour_table()
    indices = np.random.default_rng(0).integers(0, 256, (90, 110)).astype(np.uint8)
    rgb = np.stack([np.vectorize(lambda v, k=k: table[int(v)][k])(indices) for k in range(3)]).astype(np.uint8)
    profile = dict(driver="GTiff", height=90, width=110, crs="EPSG:32633", transform=from_origin(5e5, 4e6, 1, 1))
    with rasterio.open(tmp_path / "pal.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(indices, 1)
        dst.write_colormap(1, table)
    with rasterio.open(tmp_path / "rgb.tif", "w", count=3, dtype="uint8", photometric="RGB", **profile) as dst:
        dst.write(rgb)
    out = tmp_path / "out"
    assert run_cli(*_args(fpn_pre_folder, out, tmp_path / "logs", "--input", str(tmp_path / "pal.tif"),
                          str(tmp_path / "rgb.tif"))) == 0
    assert "band 1 through its colour table as R, G, B" in capsys.readouterr().err
    with rasterio.open(out / "pal_mask.tif") as a, rasterio.open(out / "rgb_mask.tif") as b:
        assert np.array_equal(a.read(1), b.read(1)) and a.transform == b.transform
    # An input range cannot apply to colours: one line naming the option and the file.
    code = run_cli(*_args(fpn_pre_folder, tmp_path / "out2", tmp_path / "logs", "--input", str(tmp_path / "pal.tif"),
                          "--input_range", "0,200"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --input_range does not apply to image") and "pal.tif" in err[-1]
    assert list_files(tmp_path / "out2") == []


def test_transparent_colour_table_entries_are_invalid_pixels(tmp_path):
    """A VRT's colour table may carry alpha: transparent entries are nodata, as a GIS shows them."""
    from dataset.scenes import RasterScene

    indices = np.tile(np.arange(4, dtype=np.uint8), (20, 8))  # 20 x 32
    with rasterio.open(tmp_path / "idx.tif", "w", driver="GTiff", height=20, width=32, count=1, dtype="uint8") as dst:
        dst.write(indices, 1)
    entries = "".join(f'<Entry c1="{10 * i}" c2="{20 * i}" c3="{30 * i}" c4="{0 if i == 2 else 255}"/>'
                      for i in range(4))
    (tmp_path / "pal.vrt").write_text(
        f'<VRTDataset rasterXSize="32" rasterYSize="20"><VRTRasterBand dataType="Byte" band="1">'
        f'<ColorInterp>Palette</ColorInterp><ColorTable>{entries}</ColorTable><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">idx.tif</SourceFilename><SourceBand>1</SourceBand></SimpleSource>'
        f'</VRTRasterBand></VRTDataset>')
    with RasterScene(str(tmp_path / "pal.vrt")) as scene:
        window = scene.read(0, 0, 20, 32)
        valid = scene.read_valid(0, 0, 20, 32)
        assert "transparent colour-table entries" in scene.describe()
    assert np.array_equal(valid, indices != 2)
    assert np.array_equal(window[:, indices == 1][:, 0], [10, 20, 30])
    assert (window[:, indices == 2] == 0).all() and np.array_equal(window[:, indices == 3][:, 0], [30, 60, 90])


# --- VRTs whose sources are missing -------------------------------------------------------------------

def _vrt(path: pathlib.Path, source: str, size: int, bands: int = 3) -> None:
    body = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">'
                   f'{source}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>'
                   for b in range(1, bands + 1))
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">{body}</VRTDataset>')


def test_a_vrt_with_a_missing_source_names_the_missing_file(fpn_pre_folder, tmp_path, capsys):
    write_synthetic_raster(str(tmp_path / "there.tif"), 80, 80)
    _vrt(tmp_path / "ok.vrt", "there.tif", 80)
    _vrt(tmp_path / "broken.vrt", "gone/away.tif", 80)
    out = tmp_path / "out"
    inputs = [tmp_path / "there.tif", tmp_path / "ok.vrt", tmp_path / "broken.vrt"]
    before = _checksums(*inputs)
    code = run_cli(*_args(fpn_pre_folder, out, tmp_path / "logs", "--input", str(tmp_path / "ok.vrt"),
                          str(tmp_path / "broken.vrt")))
    assert _checksums(*inputs) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: image ") and len([e for e in err if e.startswith("error:")]) == 1
    assert f"reads the file {tmp_path / 'gone' / 'away.tif'}, which does not exist" in err[-1]
    assert "broken.vrt" in err[-1]
    assert list_files(out) == ["ok_mask.tif"]  # the scene before it is complete; nothing of the broken one
    # The same for a label raster given to the prepare tool.
    from dataset.classes import shipped_table
    from dataset.scene_labels import SceneGrid, open_labels
    from utils.errors import InputFileError

    _vrt(tmp_path / "labels.vrt", "no_labels.tif", 80, bands=1)
    with rasterio.open(tmp_path / "there.tif") as src:
        grid = SceneGrid(src.height, src.width, src.crs, src.transform)
    with pytest.raises(InputFileError, match="no_labels.tif, which does not exist"):
        open_labels(str(tmp_path / "labels.vrt"), grid, shipped_table("deepglobe"))


# --- native diagnostics -------------------------------------------------------------------------------

def test_a_float_scene_with_nan_nodata_prints_no_numpy_warning(fpn_pre_folder, tmp_path):
    rng = np.random.default_rng(0)
    values = (rng.random((3, 70, 90)) * 1000).astype(np.float32)
    values[:, :10, :20] = np.nan
    path = tmp_path / "nan.tif"
    with rasterio.open(path, "w", driver="GTiff", height=70, width=90, count=3, dtype="float32", nodata=float("nan"),
                       crs="EPSG:32633", transform=from_origin(5e5, 4e6, 1, 1)) as dst:
        dst.write(values)
    out = _run(cli(*_args(fpn_pre_folder, tmp_path / "out", tmp_path / "logs", "--input", str(path),
                          "--input_range", "0,1000")))
    assert out.returncode == 0, out.stderr[-3000:]
    _no_raw_diagnostics(out.stderr)
    with rasterio.open(tmp_path / "out" / "nan_mask.tif") as mask:
        classes = mask.read(1)
    assert (classes[:10, :20] == 255).all() and (classes[10:] < 7).all()


@pytest.mark.slow  # fault injection: a real tmpfs, a CLI process
@needs_namespace
def test_a_full_disk_during_a_geotiff_write_is_one_line_and_leaves_nothing(fpn_pre_folder, tmp_path):
    """Enough room for the start-up check (16 MB), not for the outputs of a 2000 px scene of noise:
    libtiff's own complaints are folded into the one line, and no file is left half-written."""
    scene = tmp_path / "noise.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(scene, "w", driver="GTiff", height=2000, width=2000, count=3, dtype="uint8", tiled=True,
                       crs="EPSG:32633", transform=from_origin(5e5, 4e6, 1, 1)) as dst:
        dst.write(rng.integers(0, 256, (3, 2000, 2000), dtype=np.uint8))
    before = _checksums(scene, pathlib.Path(fpn_pre_folder) / "pre.pth")
    folder = str(tmp_path / "full")
    argv = cli(*_args(fpn_pre_folder, folder, tmp_path / "logs", "--input", str(scene), "--size_p", "128",
                      "--size_g", "128", "--save_confidence", "--save_probabilities"))
    out = in_small_tmpfs(folder, "17m", argv, after=f'ls -A "{folder}"')
    listing, stderr = out.stdout.strip(), out.stderr
    assert_one_error_line(out, "cannot write", folder, "No space left on device")
    _no_raw_diagnostics(stderr)
    assert listing == ""  # no output and no temporary file left in the full folder
    assert _checksums(scene, pathlib.Path(fpn_pre_folder) / "pre.pth") == before


def test_native_output_is_captured_and_python_output_still_shown(tmp_path):
    program = (
        "import os, sys\n"
        "from utils.logging import native_diagnostics\n"
        "with native_diagnostics() as lines:\n"
        "    os.write(2, b'_tiffWriteProc: No space left on device.\\n')\n"
        "    print('python says hello', file=sys.stderr, flush=True)\n"
        "print(lines)\n"
    )
    out = _run([sys.executable, "-c", program])
    assert out.returncode == 0, out.stderr
    assert "python says hello" in out.stderr and "_tiff" not in out.stderr
    assert out.stdout.strip() == "['_tiffWriteProc: No space left on device.']"


def test_reason_prefers_native_lines_then_the_cause_then_the_first_line():
    from utils.errors import reason

    assert reason(RuntimeError("Write failed."), ["_tiffWriteProc: No space left on device."]) == \
        "No space left on device"
    try:
        try:
            raise ValueError("gone.tif: No such file or directory")
        except ValueError as cause:
            raise RuntimeError("Read failed. See previous exception for details.") from cause
    except RuntimeError as exc:
        assert reason(exc) == "gone.tif: No such file or directory"
    assert reason(OSError(28, "No space left on device")) == "No space left on device"
    assert reason(KeyError()) == "KeyError"


def test_a_damaged_jpeg_tile_is_an_error_not_a_garbage_mask(fpn_pre_folder, tmp_path, capsys):
    """libjpeg decodes a corrupt tile with a mere warning; GDAL passes it on as a warning too."""
    path = tmp_path / "jpeg.tif"
    rng = np.random.default_rng(1)
    with rasterio.open(path, "w", driver="GTiff", height=256, width=256, count=3, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, compress="jpeg", photometric="YCbCr",
                       crs="EPSG:32633", transform=from_origin(5e5, 4e6, 1, 1)) as dst:
        dst.write(rng.integers(0, 256, (3, 256, 256), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    data[offset + size - 40:offset + size - 17] = b"\x00" * 23  # junk before the tile's end-of-image marker
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    code = run_cli(*_args(fpn_pre_folder, out, tmp_path / "logs", "--input", str(path)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: image {path}: rows ") and "damaged" in err[-1], err[-3:]
    assert "JPEG" in err[-1]  # libjpeg's own words, taken from its warning
    assert list_files(out) == []


def test_georeferencing_a_png_output_cannot_carry_is_a_warning_and_a_world_file_is_kept(fpn_pre_folder, tmp_path,
                                                                                        capsys):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 70, 3), dtype=np.uint8)).save(tmp_path / "w.png")
    (tmp_path / "w.pgw").write_text("0.5\n0\n0\n-0.5\n500000.25\n4650000.25\n")  # a world file
    write_synthetic_raster(str(tmp_path / "geo.tif"), 64, 64)
    assert run_cli(*_args(fpn_pre_folder, tmp_path / "tif", tmp_path / "logs", "--input", str(tmp_path / "w.png"),
                          "--output_format", "tif")) == 0
    with rasterio.open(tmp_path / "tif" / "w_mask.tif") as mask:
        assert tuple(mask.transform)[:6] == (0.5, 0.0, 500000.0, 0.0, -0.5, 4650000.5)
    capsys.readouterr()
    assert run_cli(*_args(fpn_pre_folder, tmp_path / "png", tmp_path / "logs", "--input", str(tmp_path / "w.png"),
                          str(tmp_path / "geo.tif"), "--output_format", "png")) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "PNG outputs cannot carry it" in line]
    assert len(warned) == 2 and "--output_format tif" in warned[0]


def test_unusual_but_legal_inputs_get_one_warning_and_impossible_outputs_one_error(fpn_pre_folder, tmp_path, capsys):
    write_synthetic_raster(str(tmp_path / "a.tif"), 64, 64)
    assert run_cli(*_args(fpn_pre_folder, tmp_path / "o1", tmp_path / "logs", "--input", str(tmp_path / "a.tif"),
                          "--input_range", "0,3000")) == 0
    assert "uint8 pixels, already 0..255, are remapped by --input_range" in capsys.readouterr().err
    blocked = tmp_path / "o2"
    (blocked / "a_mask.tif").mkdir(parents=True)  # a folder where the mask would go
    for extra in ([], ["--skip_existing"]):
        code = run_cli(*_args(fpn_pre_folder, blocked, tmp_path / "logs", "--input", str(tmp_path / "a.tif"), *extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith(f"error: the output {blocked / 'a_mask.tif'} of input") and \
            "is the name of a folder" in err[-1]
