"""The DeepGlobe split data set: listing, lazy reading, errors, skip_bad and collation."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset.classes import index_to_colour
from dataset.split_layout import SPLIT_DIRS, SplitDataset, collate_list, image_id, split_folder
from utils.errors import ConfigError, DataError


def make_split(root, folder: str, ids: list[str], ext: str = "jpg", labels: bool = True, size=(24, 32)) -> None:
    rng = np.random.default_rng(len(ids))
    os.makedirs(root / folder / "Sat", exist_ok=True)
    os.makedirs(root / folder / "Label", exist_ok=True)
    for key in ids:
        pixels = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / folder / "Sat" / f"{key}_sat.{ext}")
        if labels:
            index = (np.arange(size[0] * size[1]).reshape(size) + int(key)) % 7
            Image.fromarray(index_to_colour(index)).save(root / folder / "Label" / f"{key}_mask.png")


def test_split_names_and_folders():
    assert SPLIT_DIRS == {"train": "train", "crossvali": "crossvali", "test": "offical_crossvali"}
    assert split_folder("test") == split_folder("offical_crossvali") == "offical_crossvali"
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        split_folder("val")
    assert image_id("12_sat.JPG") == "12" and image_id("12_mask.png") is None and image_id("_sat.jpg") is None


def test_items_sorted_lazy_and_labelled(tmp_path):
    make_split(tmp_path, "train", ["3", "1", "2"], ext="jpg")
    data = SplitDataset(str(tmp_path), "train", labelled=True)
    assert data.ids == ["1", "2", "3"] and len(data) == 3
    item = data[1]
    assert item["id"] == "2" and item["path"].endswith(os.path.join("train", "Sat", "2_sat.jpg"))
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 24, 32)
    assert item["label"].dtype == torch.uint8 and item["label"].shape == (24, 32)
    expected = (np.arange(24 * 32).reshape(24, 32) + 2) % 7
    np.testing.assert_array_equal(item["label"].numpy(), expected)
    assert SplitDataset(str(tmp_path), "train", labelled=False)[0]["label"] is None


def test_test_split_folder_and_other_extensions(tmp_path):
    make_split(tmp_path, "offical_crossvali", ["5", "6"], ext="tif", labels=False)
    for split in ("test", "offical_crossvali"):
        data = SplitDataset(str(tmp_path), split, labelled=False)
        assert data.ids == ["5", "6"] and data[0]["image"].shape == (3, 24, 32)


def test_ids_subset_in_given_order(tmp_path):
    make_split(tmp_path, "crossvali", ["1", "2", "3"])
    data = SplitDataset(str(tmp_path), "crossvali", labelled=True, ids=["3_sat.jpg", "1"])
    assert data.ids == ["3", "1"]
    with pytest.raises(DataError, match="1 requested ids have no image.*: 9"):
        SplitDataset(str(tmp_path), "crossvali", labelled=True, ids=["9"])


def test_missing_folder_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="data folder not found.*`data_path`"):
        SplitDataset(str(tmp_path / "nowhere"), "train", labelled=True)
    with pytest.raises(DataError, match=r"image folder not found: .*train.Sat; run python -m tools.prepare_deepglobe"):
        SplitDataset(str(tmp_path), "train", labelled=True)
    os.makedirs(tmp_path / "train" / "Sat")
    with pytest.raises(DataError, match=r"no <id>_sat.*\(it is empty\).*`data_path`"):
        SplitDataset(str(tmp_path), "train", labelled=True)
    (tmp_path / "train" / "Sat" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="1 other files, e.g. notes.txt"):
        SplitDataset(str(tmp_path), "train", labelled=True)


def test_missing_masks_reported_at_construction(tmp_path):
    make_split(tmp_path, "train", ["1", "2", "3", "4"])
    os.remove(tmp_path / "train" / "Label" / "2_mask.png")
    os.remove(tmp_path / "train" / "Label" / "4_mask.png")
    with pytest.raises(DataError) as err:
        SplitDataset(str(tmp_path), "train", labelled=True)
    assert "2 of 4 images" in str(err.value) and "first: 2, 4" in str(err.value)
    assert SplitDataset(str(tmp_path), "train", labelled=True, skip_bad=True).ids == ["1", "3"]
    assert len(SplitDataset(str(tmp_path), "train", labelled=False)) == 4


def test_duplicate_id_is_an_error(tmp_path):
    make_split(tmp_path, "train", ["1"], ext="jpg")
    make_split(tmp_path, "train", ["1"], ext="png")
    with pytest.raises(DataError, match="two images for id '1'"):
        SplitDataset(str(tmp_path), "train", labelled=True)


def test_bad_image_raises_or_is_skipped(tmp_path, caplog, monkeypatch):
    make_split(tmp_path, "train", ["1", "2", "3"])
    bad = tmp_path / "train" / "Sat" / "2_sat.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    strict = SplitDataset(str(tmp_path), "train", labelled=True)
    with pytest.raises(DataError, match="2_sat.jpg is truncated"):
        strict[1]
    monkeypatch.setattr(logging.getLogger("dataset"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="dataset")
    lenient = SplitDataset(str(tmp_path), "train", labelled=True, skip_bad=True)
    assert lenient[1] is None
    assert any("skipping 2" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    batches = list(DataLoader(lenient, batch_size=2, collate_fn=collate_list))
    assert [b["id"] for b in batches] == [["1"], ["3"]]
    assert [b["skipped"] for b in batches] == [1, 0]


def test_collate_list_keeps_lists(tmp_path):
    make_split(tmp_path, "train", ["1", "2"], size=(24, 32))
    make_split(tmp_path, "train", ["3"], size=(40, 16))
    loader = DataLoader(SplitDataset(str(tmp_path), "train", labelled=True), batch_size=3, collate_fn=collate_list)
    batch = next(iter(loader))
    assert batch["id"] == ["1", "2", "3"] and batch["skipped"] == 0
    assert [tuple(t.shape) for t in batch["image"]] == [(3, 24, 32), (3, 24, 32), (3, 40, 16)]
    assert [tuple(t.shape) for t in batch["label"]] == [(24, 32), (24, 32), (40, 16)]
    assert len(batch["path"]) == 3
