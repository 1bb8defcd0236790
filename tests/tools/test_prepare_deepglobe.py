"""tools/prepare_deepglobe.py on a small fake download."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dataset.classes import index_to_colour
from dataset.split_layout import SplitDataset
from tools import prepare_deepglobe as prep
from utils.errors import DataError

LISTS = {"train": ["1", "2", "3"], "crossvali": ["4", "5"], "test": ["6", "7"]}


def fake_download(tmp_path, skip: tuple[str, ...] = (), no_mask: tuple[str, ...] = ()) -> tuple[str, str]:
    """Flat folder with <id>_sat.jpg and colour <id>_mask.png, plus split lists naming the ids."""
    src, splits = tmp_path / "download", tmp_path / "splits"
    src.mkdir()
    splits.mkdir()
    rng = np.random.default_rng(0)
    for split, ids in LISTS.items():
        (splits / f"{split}.txt").write_text("".join(f"{i}_sat.jpg\n" for i in ids))
        for key in ids:
            if key in skip:
                continue
            Image.fromarray(rng.integers(0, 256, (16, 20, 3)).astype(np.uint8)).save(src / f"{key}_sat.jpg")
            if key not in no_mask:
                index = (np.arange(16 * 20).reshape(16, 20) * int(key)) % 7
                Image.fromarray(index_to_colour(index)).save(src / f"{key}_mask.png")
    return str(src), str(splits)


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
    dst = tmp_path / "data"
    report = prep.prepare(src, str(dst), splits, link=True, progress=False)
    assert report.found == 7 and report.link_failure is None
    assert sorted(os.listdir(dst)) == ["crossvali", "offical_crossvali", "train"]
    assert sorted(os.listdir(dst / "train" / "Sat")) == ["1_sat.jpg", "2_sat.jpg", "3_sat.jpg"]
    image = dst / "crossvali" / "Sat" / "4_sat.jpg"
    assert os.path.samefile(image, os.path.join(src, "4_sat.jpg"))
    with Image.open(dst / "train" / "Label" / "3_mask.png") as mask:
        assert mask.mode == "L"
        np.testing.assert_array_equal(np.array(mask), (np.arange(16 * 20).reshape(16, 20) * 3) % 7)
    data = SplitDataset(str(dst), "test", labelled=True)
    assert data.ids == ["6", "7"] and data[0]["label"].shape == (16, 20)
    assert not any(".tmp-" in p for p in tree(dst))


def test_prepare_copy_mode_and_rerun_is_safe(tmp_path):
    src, splits = fake_download(tmp_path)
    dst = tmp_path / "data"
    first = prep.prepare(src, str(dst), splits, link=False, progress=False)
    assert first.splits[0].images == {"linked": 0, "copied": 3, "up to date": 0}
    assert not os.path.samefile(dst / "train" / "Sat" / "1_sat.jpg", os.path.join(src, "1_sat.jpg"))
    before = tree(dst)
    again = prep.prepare(src, str(dst), splits, link=False, progress=False)
    assert tree(dst) == before
    assert all(s.images["up to date"] == s.listed for s in again.splits)
    assert all(s.masks["up to date"] == s.listed and s.masks["converted"] == 0 for s in again.splits)
    # A damaged output (emptied mask) is redone on the next run.
    (dst / "train" / "Label" / "2_mask.png").write_bytes(b"")
    third = prep.prepare(src, str(dst), splits, link=False, progress=False)
    assert third.splits[0].masks["converted"] == 1
    assert SplitDataset(str(dst), "train", labelled=True)[1]["label"].shape == (16, 20)


def test_prepare_reports_missing_per_split(tmp_path, capsys):
    src, splits = fake_download(tmp_path, skip=("2",), no_mask=("5", "7"))
    dst = str(tmp_path / "data")
    assert prep.main(["--src", src, "--dst", dst, "--splits_dir", splits]) == 0
    out = capsys.readouterr().out
    assert "train: 1 images missing from the download: 2" in out
    assert "crossvali: 1 masks missing: 5" in out
    assert "test: 1 images have no mask (not needed for testing)" in out


def test_prepare_bad_mask_is_reported_not_fatal(tmp_path):
    src, splits = fake_download(tmp_path)
    colour = index_to_colour(np.zeros((16, 20), np.uint8))
    colour[0, 0] = (1, 2, 3)
    Image.fromarray(colour).save(os.path.join(src, "1_mask.png"))
    report = prep.prepare(src, str(tmp_path / "data"), splits, progress=False)
    assert len(report.splits[0].bad) == 1 and "1_mask.png" in report.splits[0].bad[0]
    assert report.splits[0].masks["converted"] == 2


def test_prepare_nothing_found_exits_2(tmp_path, capsys):
    _, splits = fake_download(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="none of the 7 images"):
        prep.prepare(str(empty), str(tmp_path / "data"), splits, progress=False)
    assert prep.main(["--src", str(empty), "--dst", str(tmp_path / "data"), "--splits_dir", splits]) == 2
    assert capsys.readouterr().err.startswith("error: none of the 7 images")
    assert prep.main(["--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "d"), "--splits_dir", splits]) == 2


def test_kaggle_layout_with_train_subfolder(tmp_path):
    src, splits = fake_download(tmp_path)
    nested = tmp_path / "kaggle"
    os.makedirs(nested)
    os.rename(src, nested / "train")
    report = prep.prepare(str(nested), str(tmp_path / "data"), splits, progress=False)
    assert report.found == 7
