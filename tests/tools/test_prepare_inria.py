"""tools/prepare_inria.py on a small fake Inria download."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dataset.split_layout import SplitDataset
from tools import prepare_inria as prep
from utils.errors import DataError

LISTS = {"train": ["austin1", "austin2", "chicago1"], "crossvali": ["kitsap1", "tyrol-w1"], "test": ["vienna1", "vienna2"]}
H, W = 16, 20


def building(key: str) -> np.ndarray:
    """A 0/1 building map that differs per id."""
    return ((np.arange(H * W).reshape(H, W) * (len(key) + int(key[-1]))) % 3 == 0).astype(np.uint8)


def fake_download(tmp_path, skip: tuple[str, ...] = (), no_gt: tuple[str, ...] = ()) -> tuple[str, str]:
    """<tmp>/AerialImageDataset/train/{images,gt}/<id>.tif plus split lists naming `<id>_sat.tif`.

    Returns (AerialImageDataset folder, split-list folder)."""
    src, splits = tmp_path / "AerialImageDataset", tmp_path / "splits"
    (src / "train" / "images").mkdir(parents=True)
    (src / "train" / "gt").mkdir()
    splits.mkdir()
    rng = np.random.default_rng(0)
    for split, ids in LISTS.items():
        (splits / f"{split}.txt").write_text("".join(f"{i}_sat.tif\n" for i in ids))
        for key in ids:
            if key in skip:
                continue
            rgb = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
            Image.fromarray(rgb).save(src / "train" / "images" / f"{key}.tif")
            if key not in no_gt:
                Image.fromarray(building(key) * 255, mode="L").save(src / "train" / "gt" / f"{key}.tif")
    return str(src), str(splits)


def gt_path(src: str, key: str) -> str:
    return os.path.join(src, "train", "gt", f"{key}.tif")


def tree(root) -> dict[str, int]:
    """Relative path -> mtime_ns of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = os.stat(path).st_mtime_ns
    return out


def test_prepare_builds_layout_links_and_converts(tmp_path):
    src, splits = fake_download(tmp_path)
    dst = tmp_path / "data_inria"
    report = prep.prepare(src, str(dst), splits, link=True, progress=False)
    assert report.found == 7 and report.link_failure is None
    assert sorted(os.listdir(dst)) == ["crossvali", "offical_crossvali", "train"]
    assert sorted(os.listdir(dst / "train" / "Sat")) == ["austin1_sat.tif", "austin2_sat.tif", "chicago1_sat.tif"]
    assert sorted(os.listdir(dst / "crossvali" / "Label")) == ["kitsap1_mask.png", "tyrol-w1_mask.png"]
    assert sorted(os.listdir(dst / "offical_crossvali" / "Sat")) == ["vienna1_sat.tif", "vienna2_sat.tif"]
    for split, ids in LISTS.items():
        folder = dst / ("offical_crossvali" if split == "test" else split)
        for key in ids:
            image, source = folder / "Sat" / f"{key}_sat.tif", os.path.join(src, "train", "images", f"{key}.tif")
            assert os.stat(image).st_ino == os.stat(source).st_ino  # hard link, not a copy
            with open(image, "rb") as a, open(source, "rb") as b:
                assert a.read() == b.read()
            with Image.open(folder / "Label" / f"{key}_mask.png") as mask:
                assert mask.mode == "L" and mask.format == "PNG"
                np.testing.assert_array_equal(np.array(mask), building(key))
    data = SplitDataset(str(dst), "train", labelled=True)
    assert data.ids == LISTS["train"]
    label = data[0]["label"]
    assert tuple(label.shape) == (H, W) and set(np.unique(label.numpy()).tolist()) == {0, 1}
    assert tuple(data[0]["image"].shape) == (3, H, W)
    assert not any(".tmp" in p for p in tree(dst))


def test_rerun_skips_up_to_date_outputs(tmp_path):
    src, splits = fake_download(tmp_path)
    dst = tmp_path / "data_inria"
    prep.prepare(src, str(dst), splits, progress=False)
    before = tree(dst)
    again = prep.prepare(src, str(dst), splits, progress=False)
    assert tree(dst) == before
    assert all(s.images["up to date"] == s.listed for s in again.splits)
    assert all(s.masks["up to date"] == s.listed and s.masks["converted"] == 0 for s in again.splits)
    # A damaged output (emptied mask) is redone on the next run, and only that one.
    (dst / "train" / "Label" / "austin2_mask.png").write_bytes(b"")
    third = prep.prepare(src, str(dst), splits, progress=False)
    assert third.splits[0].masks == {"converted": 1, "up to date": 2}
    np.testing.assert_array_equal(np.array(Image.open(dst / "train" / "Label" / "austin2_mask.png")), building("austin2"))


def test_copy_mode_copies_bytes_unchanged(tmp_path):
    src, splits = fake_download(tmp_path)
    dst = tmp_path / "data_inria"
    first = prep.prepare(src, str(dst), splits, link=False, progress=False)
    assert first.splits[0].images == {"linked": 0, "copied": 3, "up to date": 0}
    image, source = dst / "train" / "Sat" / "austin1_sat.tif", os.path.join(src, "train", "images", "austin1.tif")
    assert not os.path.samefile(image, source)
    assert image.read_bytes() == open(source, "rb").read()
    again = prep.prepare(src, str(dst), splits, link=False, progress=False)
    assert again.splits[0].images["up to date"] == 3


def test_missing_images_and_gt_reported_per_split(tmp_path, capsys):
    src, splits = fake_download(tmp_path, skip=("austin2",), no_gt=("kitsap1", "vienna2"))
    dst = str(tmp_path / "data_inria")
    assert prep.main(["--src", src, "--dst", dst, "--splits", splits]) == 0
    out = capsys.readouterr().out
    assert "train: 1 images missing from the download: austin2" in out
    assert "crossvali: 1 masks missing: kitsap1" in out
    assert "test: 1 images have no mask (not needed for testing)" in out
    assert sorted(os.listdir(os.path.join(dst, "offical_crossvali", "Label"))) == ["vienna1_mask.png"]


def test_bad_gt_value_is_one_line_naming_the_file(tmp_path, capsys):
    src, splits = fake_download(tmp_path)
    values = building("austin1") * 255
    values[0, 0] = 128
    Image.fromarray(values, mode="L").save(gt_path(src, "austin1"))
    dst = tmp_path / "data_inria"
    report = prep.prepare(src, str(dst), splits, progress=False)
    bad = report.splits[0].bad
    assert len(bad) == 1 and gt_path(src, "austin1") in bad[0] and "128" in bad[0] and "\n" not in bad[0]
    assert report.splits[0].masks["converted"] == 2
    assert not (dst / "train" / "Label" / "austin1_mask.png").exists()
    assert report.splits[0].images["linked"] == 3  # the image is placed; only its mask is left out
    assert prep.main(["--src", src, "--dst", str(dst), "--splits", splits]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert len(lines) == 1 and lines[0].startswith("train: skipped: ground truth ") and "austin1.tif" in lines[0]


def test_gt_mixing_1_and_255_or_in_colour_is_an_error(tmp_path):
    src, splits = fake_download(tmp_path)
    values = building("austin1") * 255
    values[0, 0] = 1
    Image.fromarray(values, mode="L").save(gt_path(src, "austin1"))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(gt_path(src, "kitsap1"))
    report = prep.prepare(src, str(tmp_path / "data_inria"), splits, progress=False)
    assert len(report.splits[0].bad) == 1 and "both 1" in report.splits[0].bad[0]
    assert len(report.splits[1].bad) == 1 and "kitsap1.tif" in report.splits[1].bad[0]
    assert "pixel mode RGB" in report.splits[1].bad[0]


def test_gt_already_0_1_is_accepted(tmp_path):
    src, splits = fake_download(tmp_path)
    Image.fromarray(building("chicago1"), mode="L").save(gt_path(src, "chicago1"))
    dst = tmp_path / "data_inria"
    report = prep.prepare(src, str(dst), splits, progress=False)
    assert report.splits[0].bad == [] and report.splits[0].masks["converted"] == 3
    np.testing.assert_array_equal(np.array(Image.open(dst / "train" / "Label" / "chicago1_mask.png")), building("chicago1"))


def test_gt_of_the_wrong_size_is_an_error_naming_the_file(tmp_path):
    src, splits = fake_download(tmp_path)
    Image.fromarray(np.zeros((W, H), np.uint8), mode="L").save(gt_path(src, "tyrol-w1"))
    report = prep.prepare(src, str(tmp_path / "data_inria"), splits, progress=False)
    bad = report.splits[1].bad
    assert len(bad) == 1 and gt_path(src, "tyrol-w1") in bad[0] and f"is {W}x{H}" in bad[0] and f"{H}x{W}" in bad[0]
    assert report.splits[1].masks["converted"] == 1


@pytest.mark.parametrize("where", ["parent", "download", "train"])
def test_src_at_parent_download_or_train_folder(tmp_path, where):
    src, splits = fake_download(tmp_path)
    path = {"parent": str(tmp_path), "download": src, "train": os.path.join(src, "train")}[where]
    report = prep.prepare(path, str(tmp_path / "data_inria"), splits, progress=False)
    assert report.found == 7 and all(s.masks["converted"] == s.listed for s in report.splits)


def test_nothing_found_exits_2_with_one_error_line(tmp_path, capsys):
    src, splits = fake_download(tmp_path, skip=tuple(k for ids in LISTS.values() for k in ids))
    dst = str(tmp_path / "data_inria")
    with pytest.raises(DataError, match="none of the 7 images"):
        prep.prepare(src, dst, splits, progress=False)
    for path in (src, str(tmp_path / "missing"), str(tmp_path / "splits")):
        assert prep.main(["--src", path, "--dst", dst, "--splits", splits]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not os.path.exists(dst)


def test_shipped_split_lists():
    lists = {split: prep.read_split_list(os.path.join(prep.DEFAULT_SPLITS_DIR, f"{split}.txt")) for split in prep.SPLITS}
    assert {split: len(ids) for split, ids in lists.items()} == {"train": 126, "crossvali": 27, "test": 27}
    every = [key for ids in lists.values() for key in ids]
    assert len(set(every)) == len(every) == 180
    assert all(not key.endswith("_sat") and not key.endswith(".tif") for key in every)
    cities = {key.rstrip("0123456789") for key in every}
    assert cities == {"austin", "chicago", "kitsap", "tyrol-w", "vienna"}
