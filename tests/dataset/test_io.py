"""Palette conversion, image/mask reading (formats, conversions, errors) and mask writing."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from dataset import io as dio
from dataset.classes import CLASS_NAMES, N_CLASSES, PALETTE, colour_to_index, index_to_colour
from utils.errors import DataError


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """caplog that also sees the dataset package's records when the app's logging set-up stopped
    them from propagating to the root logger."""
    monkeypatch.setattr(logging.getLogger("dataset"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="dataset")
    return caplog


def random_index(h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, N_CLASSES, (h, w)).astype(np.uint8)


def random_rgb(h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_palette_matches_deepglobe():
    assert N_CLASSES == len(CLASS_NAMES) == len(PALETTE) == 7
    assert CLASS_NAMES[2] == "agriculture" and tuple(PALETTE[2]) == (255, 255, 0)
    assert tuple(PALETTE[1]) == (0, 255, 255) and tuple(PALETTE[6]) == (255, 255, 255)
    assert len({tuple(c) for c in PALETTE}) == 7


def test_colour_index_round_trip_numpy_and_tensor():
    index = random_index()
    colour = index_to_colour(index)
    assert colour.dtype == np.uint8 and colour.shape == (20, 24, 3)
    np.testing.assert_array_equal(colour_to_index(colour, "x.png"), index)
    tensor = index_to_colour(torch.from_numpy(index))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8
    np.testing.assert_array_equal(tensor.numpy(), colour)


def test_unknown_colour_names_file_colour_and_count():
    colour = index_to_colour(random_index())
    colour[3, 5] = (254, 255, 0)
    colour[7, 1] = (10, 10, 10)
    with pytest.raises(DataError) as err:
        colour_to_index(colour, "/data/7_mask.png")
    message = str(err.value)
    assert "/data/7_mask.png" in message and "(254, 255, 0)" in message and "2 of 480 pixels" in message
    assert "\n" not in message


def save(path, array: np.ndarray, **kwargs) -> str:
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def test_read_image_rgb_jpeg_and_tiff(tmp_path):
    rgb = random_rgb()
    image = dio.read_image(save(tmp_path / "a_sat.png", rgb))
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 24) and image.is_contiguous()
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), rgb)
    for ext in ("tif", "tiff"):
        image = dio.read_image(save(tmp_path / f"a_sat.{ext}", rgb))
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), rgb)
    assert dio.read_image(save(tmp_path / "a_sat.jpg", rgb, quality=95)).shape == (3, 20, 24)


def grey3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[:, :, :1], 3, 2)


@pytest.mark.parametrize(
    "make, expected, words",
    [
        (lambda a: Image.fromarray(a[:, :, 0]), grey3, "grayscale"),
        (lambda a: Image.fromarray(np.dstack([a, np.full(a.shape[:2], 7, np.uint8)])), lambda a: a, "alpha"),
        (lambda a: Image.fromarray(np.ascontiguousarray(a[:, :, :2])), grey3, "alpha"),
        (lambda a: Image.fromarray(a[:, :, 0].astype(np.uint16) * 256 + 255), grey3, ">> 8"),
    ],
    ids=["L", "RGBA", "LA", "I;16"],
)
def test_conversions_warn_and_name_file(tmp_path, warnings_seen, make, expected, words):
    rgb = random_rgb()
    path = str(tmp_path / "conv_sat.png")
    make(rgb).save(path)
    image = dio.read_image(path)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected(rgb))
    messages = [r.getMessage() for r in warnings_seen.records if r.levelno == logging.WARNING]
    assert any(path in m and words in m for m in messages), messages


def test_palette_and_32bit_images_convert(tmp_path, warnings_seen):
    rgb = random_rgb()
    paletted = Image.fromarray(rgb).quantize(16)
    paletted.save(tmp_path / "p_sat.png")
    np.testing.assert_array_equal(dio.read_image(str(tmp_path / "p_sat.png")).permute(1, 2, 0).numpy(),
                                  np.array(paletted.convert("RGB")))
    values = rgb[:, :, 0].astype(np.int32) * 256
    Image.fromarray(values).save(tmp_path / "i_sat.tif")
    np.testing.assert_array_equal(dio.read_image(str(tmp_path / "i_sat.tif"))[1].numpy(), rgb[:, :, 0])
    assert any("palette" in r.getMessage() for r in warnings_seen.records)


def test_missing_zero_byte_corrupt_and_truncated_images(tmp_path):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(DataError, match="not found: .*nope_sat.jpg"):
        dio.read_image(str(tmp_path / "nope_sat.jpg"))
    (tmp_path / "zero_sat.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero_sat.jpg is empty \(0 bytes\)"):
        dio.read_image(str(tmp_path / "zero_sat.jpg"))
    (tmp_path / "junk_sat.jpg").write_bytes(b"not an image at all" * 10)
    with pytest.raises(DataError, match="junk_sat.jpg is not a readable image"):
        dio.read_image(str(tmp_path / "junk_sat.jpg"))
    for ext in ("jpg", "png"):
        whole = tmp_path / f"whole.{ext}"
        save(whole, random_rgb(64, 64))
        data = whole.read_bytes()
        cut = tmp_path / f"cut_sat.{ext}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError) as err:
            dio.read_image(str(cut))
        assert str(cut) in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)


def test_decompression_bomb_limit_names_the_option(tmp_path, monkeypatch):
    path = save(tmp_path / "big_sat.png", random_rgb(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="`allow_large_images`"):
        dio.read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(DataError, match="`allow_large_images`"):
        dio.read_image(path)
    dio.allow_large_images(True)
    assert Image.MAX_IMAGE_PIXELS is None
    assert dio.read_image(path).shape == (3, 40, 40)
    dio.allow_large_images(False)
    assert Image.MAX_IMAGE_PIXELS == 89478485


def test_read_mask_formats(tmp_path):
    index = random_index()
    colour_path = save(tmp_path / "c_mask.png", index_to_colour(index))
    index_path = save(tmp_path / "i_mask.png", index)
    grey_rgb_path = save(tmp_path / "g_mask.png", np.repeat(index[:, :, None], 3, 2))
    sixteen_path = save(tmp_path / "s_mask.png", index.astype(np.uint16))
    for path in (colour_path, index_path, grey_rgb_path, sixteen_path):
        mask = dio.read_mask(path, (20, 24))
        assert mask.dtype == torch.uint8 and mask.shape == (20, 24), path
        np.testing.assert_array_equal(mask.numpy(), index, err_msg=path)


def palette_png(path, indices: np.ndarray, palette: np.ndarray) -> str:
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), np.ascontiguousarray(indices).tobytes())
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    image.save(path)
    return str(path)


def test_read_mask_palette_png_by_colours_or_indices(tmp_path):
    index = random_index()
    # Palette entries hold DeepGlobe colours in a shuffled order: the colours decide.
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    shuffled = palette_png(tmp_path / "shuffled_mask.png", np.argsort(order)[index].astype(np.uint8), PALETTE[order])
    np.testing.assert_array_equal(dio.read_mask(shuffled, (20, 24)).numpy(), index)
    # A grey decorative palette (entry i = (i, i, i)) is not DeepGlobe colours: the indices decide.
    grey = np.repeat(np.arange(256)[:, None], 3, 1)
    decorative = palette_png(tmp_path / "grey_mask.png", index, grey)
    np.testing.assert_array_equal(dio.read_mask(decorative, (20, 24)).numpy(), index)
    # Neither: indices above 6 with non-palette colours.
    bad = palette_png(tmp_path / "bad_mask.png", (index + 10).astype(np.uint8), grey)
    with pytest.raises(DataError, match="bad_mask.png.*neither"):
        dio.read_mask(bad, (20, 24))


def test_mask_errors(tmp_path):
    index = random_index()
    with pytest.raises(DataError, match="label mask not found: .*none_mask.png"):
        dio.read_mask(str(tmp_path / "none_mask.png"), (20, 24))
    path = save(tmp_path / "m_mask.png", index)
    with pytest.raises(DataError) as err:
        dio.read_mask(path, (20, 25))
    assert "m_mask.png" in str(err.value) and "20x24" in str(err.value) and "20x25" in str(err.value)
    high = index.copy()
    high[0, 0] = 9
    with pytest.raises(DataError, match="values up to 9"):
        dio.read_mask(save(tmp_path / "high_mask.png", high), (20, 24))
    colour = index_to_colour(index)
    colour[2, 2] = (0, 128, 0)
    with pytest.raises(DataError) as err:
        dio.read_mask(save(tmp_path / "off_mask.png", colour), (20, 24))
    assert "off_mask.png" in str(err.value) and "(0, 128, 0)" in str(err.value)


def test_write_mask_png_exact_colours(tmp_path):
    index = random_index()
    path = str(tmp_path / "out" / "p_mask.png")
    dio.write_mask_png(path, torch.from_numpy(index))
    with Image.open(path) as image:
        assert image.mode == "RGB"
        written = np.array(image)
    np.testing.assert_array_equal(written, PALETTE[index])
    assert set(np.unique(written)) <= {0, 255}
    assert os.listdir(tmp_path / "out") == ["p_mask.png"]
    dio.write_index_png(str(tmp_path / "i_mask.png"), index)
    with Image.open(tmp_path / "i_mask.png") as image:
        assert image.mode == "L"
    np.testing.assert_array_equal(dio.read_mask(str(tmp_path / "i_mask.png"), None).numpy(), index)


def test_write_is_atomic(tmp_path, monkeypatch):
    index = random_index()
    target = tmp_path / "keep_mask.png"
    dio.write_mask_png(str(target), index)
    before = target.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(DataError, match=f"into folder {tmp_path}"):
        dio.write_mask_png(str(target), np.zeros_like(index))
    with pytest.raises(DataError):
        dio.write_mask_png(str(tmp_path / "new_mask.png"), index)
    assert sorted(os.listdir(tmp_path)) == ["keep_mask.png"]
    assert target.read_bytes() == before


def test_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError) as err:
        dio.write_mask_png(str(blocker / "sub" / "a_mask.png"), random_index())
    assert str(blocker / "sub") in str(err.value)


def test_band_writer_writes_the_same_png_as_a_whole_mask(tmp_path):
    from dataset.io import PngBandWriter

    rng = np.random.default_rng(0)
    index = rng.integers(0, 7, size=(75, 41)).astype(np.uint8)
    path = str(tmp_path / "m_mask.png")
    with PngBandWriter(path, 75, 41) as writer:
        for y0 in range(0, 75, 20):
            writer.write(index[y0:y0 + 20])
    read = np.asarray(Image.open(path))
    assert read.shape == (75, 41, 3)
    assert np.array_equal(read, PALETTE[index])


def test_band_writer_leaves_no_file_when_rows_are_missing(tmp_path):
    from dataset.io import PngBandWriter

    path = tmp_path / "m_mask.png"
    with pytest.raises(ValueError):
        with PngBandWriter(str(path), 10, 5) as writer:
            writer.write(np.zeros((4, 5), np.uint8))
    assert list(tmp_path.iterdir()) == []
