"""Large images on disk: Pillow's pixel limit and --allow_large_images, band-wise reading of every pixel
mode, shared-memory results in DataLoader workers, and TIFF scenes predicted and scored by the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dataset import io as dio
from dataset.classes import index_to_colour
from models.checkpoint import save_weights
from models.fctl import FCtLNet
from tests.cli.helpers import list_files, run_cli, tiny_args
from utils.errors import DataError


def rgb_array(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize("side", [40, 60])  # 1600 px: Pillow warns (our error); 3600 px: Pillow's own error
def test_a_tiff_over_the_pixel_limit_needs_the_option_and_then_reads(tmp_path, monkeypatch, side):
    rgb = rgb_array(side, side)
    path = str(tmp_path / "scene_sat.tif")
    Image.fromarray(rgb).save(path, compression="tiff_lzw")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError) as err:
        dio.read_image(path)
    message = str(err.value)
    assert "`allow_large_images`" in message and path in message and f"{side * side} pixels" in message
    assert "\n" not in message
    dio.allow_large_images(True)
    try:
        image = dio.read_image(path)
    finally:
        dio.allow_large_images(False)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), rgb)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "I;16", "CMYK"])
def test_band_by_band_reading_equals_converting_the_whole_image(tmp_path, monkeypatch, mode):
    rgb = rgb_array(37, 29, seed=3)
    base = Image.fromarray(rgb)
    if mode == "RGB":
        image, want = base, rgb
    elif mode == "L":
        image = base.convert("L")
        want = np.repeat(np.array(image)[:, :, None], 3, 2)
    elif mode == "P":
        image = base.quantize(16)
        want = np.array(image.convert("RGB"))
    elif mode == "RGBA":
        image = Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]))
        want = rgb
    elif mode == "I;16":
        values = rgb[:, :, 0].astype(np.uint16) * 256 + 17
        image = Image.fromarray(values)
        want = np.repeat(rgb[:, :, :1], 3, 2)
    else:
        image = base.convert("CMYK")
        want = np.array(image.convert("RGB"))
    path = str(tmp_path / f"m_sat.{'png' if mode in ('P', 'I;16', 'L', 'RGBA') else 'tif'}")
    image.save(path)
    monkeypatch.setattr(dio, "_BAND_BYTES", 4 * 29 * 5)  # bands of 5 rows: 8 bands, the last one short
    out = dio.read_image(path)
    assert out.dtype == torch.uint8 and out.shape == (3, 37, 29) and out.is_contiguous()
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), want)


class _SharedFlag(Dataset):
    def __init__(self, path: str) -> None:
        self.path = path

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        image = dio.read_image(self.path)
        return {"shared_in_worker": image.is_shared(), "image": image}


def test_in_a_dataloader_worker_the_image_is_read_into_shared_memory(tmp_path):
    path = str(tmp_path / "w_sat.png")
    Image.fromarray(rgb_array(20, 30)).save(path)
    assert not dio.read_image(path).is_shared()  # in the main process: ordinary memory
    item = next(iter(DataLoader(_SharedFlag(path), batch_size=None, num_workers=1)))
    assert item["shared_in_worker"] and item["image"].shape == (3, 20, 30)


def _tiff_split(root, split: str, ids: dict[str, tuple[int, int]], labelled: bool) -> None:
    sat = root / split / "Sat"
    sat.mkdir(parents=True)
    if labelled:
        (root / split / "Label").mkdir()
    for n, (name, (h, w)) in enumerate(ids.items()):
        ext = "tif" if n % 2 == 0 else "tiff"
        Image.fromarray(rgb_array(h, w, seed=n)).save(sat / f"{name}_sat.{ext}", compression="tiff_deflate")
        if labelled:
            index = np.random.default_rng(n).integers(0, 7, (h, w)).astype(np.uint8)
            Image.fromarray(index_to_colour(index)).save(root / split / "Label" / f"{name}_mask.png")


@pytest.fixture(scope="module")
def tiff_data(tmp_path_factory):
    """TIFF scenes (one non-square) in the test and crossvali splits, and a mode-1 fpn_resnet18 checkpoint."""
    root = tmp_path_factory.mktemp("tiff_data")
    sizes = {"t1": (70, 90), "t2": (96, 64)}
    _tiff_split(root / "data", "offical_crossvali", sizes, labelled=False)
    _tiff_split(root / "data", "crossvali", sizes, labelled=True)
    torch.manual_seed(0)
    (root / "models").mkdir()
    save_weights(FCtLNet(1, "fpn_resnet18"), str(root / "models" / "pre.pth"))
    return root, sizes


def test_tiff_scenes_are_predicted_and_scored_by_the_cli(tiff_data, tmp_path):
    root, sizes = tiff_data
    args = tiny_args(str(root / "data"), str(root / "models"), str(tmp_path / "logs"), "--mode", "1",
                     "--pre_path", "pre.pth")
    out = tmp_path / "pred"
    assert run_cli(*args, "--prediction_path", str(out)) == 0
    assert list_files(str(out)) == ["t1_mask.png", "t2_mask.png"]
    for name, (h, w) in sizes.items():
        with Image.open(out / f"{name}_mask.png") as mask:
            assert mask.size == (w, h) and mask.mode == "RGB"
    metrics = tmp_path / "m.json"
    assert run_cli(*args, "--evaluate", "--metrics_path", str(metrics)) == 0
    scores = json.loads(metrics.read_text())
    assert scores["images"] == 2 and sum(map(sum, scores["confusion_matrix"])) == 70 * 90 + 96 * 64


def test_a_scene_over_the_pixel_limit_is_a_clear_cli_error_until_allowed(tiff_data, tmp_path, monkeypatch, capsys):
    root, sizes = tiff_data
    # The entry script resets Pillow's limit to its default unless --allow_large_images: lower both.
    monkeypatch.setattr(dio, "_DEFAULT_MAX_PIXELS", 3000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    args = tiny_args(str(root / "data"), str(root / "models"), str(tmp_path / "logs"), "--mode", "1",
                     "--pre_path", "pre.pth", "--prediction_path", str(tmp_path / "pred"))
    assert run_cli(*args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--allow_large_images" in last and "t1_sat.tif" in last
    assert run_cli(*args, "--allow_large_images") == 0
    assert list_files(str(tmp_path / "pred")) == ["t1_mask.png", "t2_mask.png"]
    assert Image.MAX_IMAGE_PIXELS is None
    dio.allow_large_images(False)
