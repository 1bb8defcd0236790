"""The synthetic generator: layout, determinism, and that context (not the patch) decides field labels."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dataset import synthetic as syn
from dataset.split_layout import SplitDataset
from tools import make_synthetic


def files(root) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = handle.read()
    return out


def test_layout_readable_by_deepglobe(tmp_path):
    written = syn.generate(str(tmp_path), 2, 1, 1, 64, seed=0)
    assert written == {"train": ["train0000", "train0001"], "crossvali": ["crossvali0000"], "test": ["test0000"]}
    for split, count in (("train", 2), ("crossvali", 1), ("test", 1)):
        data = SplitDataset(str(tmp_path), split, labelled=True)
        assert len(data) == count
        item = data[0]
        assert item["image"].shape == (3, 64, 64) and item["label"].shape == (64, 64)
        assert int(item["label"].max()) <= 6 and item["path"].endswith("_sat.png")
    assert os.path.isdir(tmp_path / "offical_crossvali" / "Label")


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    syn.generate(str(tmp_path / "a"), 2, 1, 1, 64, seed=3)
    syn.generate(str(tmp_path / "b"), 2, 1, 1, 64, seed=3)
    syn.generate(str(tmp_path / "c"), 2, 1, 1, 64, seed=4)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and len(a) == 8
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith("_sat.png"))


def test_images_do_not_depend_on_count_and_rerun_removes_surplus(tmp_path):
    syn.generate(str(tmp_path / "big"), 3, 0, 0, 48, seed=1)
    syn.generate(str(tmp_path / "small"), 1, 0, 0, 48, seed=1)
    big, small = files(tmp_path / "big"), files(tmp_path / "small")
    assert all(big[k] == small[k] for k in small)
    syn.generate(str(tmp_path / "big"), 1, 0, 0, 48, seed=1)
    assert files(tmp_path / "big") == small


def test_cli(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--train", "1", "--val", "1", "--test", "1", "--size", "96"]
    assert make_synthetic.main(args) == 0
    out = capsys.readouterr().out
    assert "wrote train 1, crossvali 1, test 1 images of 96x96" in out and "3x-window oracle" in out
    with pytest.raises(SystemExit):
        make_synthetic.main(["--out", str(tmp_path), "--size", "8"])


@pytest.fixture(scope="module")
def scenes() -> tuple[list[np.ndarray], list[np.ndarray]]:
    pairs = [syn.make_scene(syn.scene_rng(0, "train", i), 256, syn.is_farm(0, "train", i)) for i in range(24)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_field_texture_identical_other_textures_distinct(scenes):
    images, labels = scenes
    stats = syn.context_stats(labels, 64, images=images)
    assert stats["colour_gap"] < 8.0
    field = np.concatenate([im[np.isin(lab, syn.FIELD_LABELS)] for im, lab in zip(images, labels)]).mean(0)
    for cls in (syn.URBAN, syn.FOREST, syn.WATER, syn.BARREN):
        other = np.concatenate([im[lab == cls] for im, lab in zip(images, labels)]).mean(0)
        assert np.abs(other - field).max() > 30, cls


def test_context_decides_field_labels(scenes):
    images, labels = scenes
    stats = syn.context_stats(labels, 96)
    assert stats["blind_windows"] > 0.2
    assert stats["patch_oracle"] < 0.9 and stats["patch_oracle_blind"] < 0.7
    assert stats["window_oracle"] > 0.95 and stats["window_oracle_blind"] > 0.9
    assert stats["global_oracle"] == 1.0


def test_scene_types_and_lakes(scenes):
    _, labels = scenes
    farm = [syn.is_farm(0, "train", i) for i in range(len(labels))]
    for is_farm, label in zip(farm, labels):
        present = set(np.unique(label).tolist())
        assert (syn.URBAN in present) == is_farm and (syn.BARREN in present) != is_farm
        assert (syn.AGRICULTURE in present) == is_farm and (syn.RANGELAND in present) != is_farm
        settlement = syn.URBAN if is_farm else syn.BARREN
        assert (label == settlement).mean() >= syn.MIN_SETTLEMENT - 1e-3
    lakes = [bool((label == syn.WATER).any()) for label in labels]
    # Lakes occur in both scene types, so water is no cue.
    assert any(w and f for w, f in zip(lakes, farm)) and any(w and not f for w, f in zip(lakes, farm))


def window_features(image: np.ndarray, label: np.ndarray, p: int = 96, step: int = 32):
    """Blind windows (field, no settlement): colour statistics of the patch and of its centred 3p
    window, and the field label."""
    size = label.shape[0]
    for top in range(0, size - p + 1, step):
        for left in range(0, size - p + 1, step):
            window = label[top : top + p, left : left + p]
            field = np.isin(window, syn.FIELD_LABELS)
            if not field.any() or np.isin(window, (syn.URBAN, syn.BARREN)).any():
                continue
            def stats(pixels: np.ndarray) -> np.ndarray:
                # Shares of grey (urban-like) and light tan (barren-like) pixels.
                r, g, b = (pixels[..., k].astype(np.float32).ravel() for k in range(3))
                grey = (np.abs(r - b) < 25) & (np.abs(r - g) < 25) & (r > 70)
                tan = (r > 165) & (g > 145) & (b > 115)
                return np.r_[grey.mean(), tan.mean()]
            around = image[max(top - p, 0) : top + 2 * p, max(left - p, 0) : left + 2 * p]
            yield stats(image[top : top + p, left : left + p]), stats(around), int(window[field][0])


def knn_accuracy(train: list, test: list, column: int) -> float:
    x_train = np.array([r[column] for r in train])
    y_train = np.array([r[2] for r in train])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train = (x_train - mean) / std
    x_test = (np.array([r[column] for r in test]) - mean) / std
    y_test = np.array([r[2] for r in test])
    distances = ((x_test[:, None, :] - x_train[None, :, :]) ** 2).sum(-1)
    nearest = y_train[np.argsort(distances, axis=1)[:, :5]]
    knn = np.where((nearest == syn.AGRICULTURE).sum(1) >= 3, syn.AGRICULTURE, syn.RANGELAND)
    return float((knn == y_test).mean())


def test_patch_colours_do_not_predict_but_window_colours_do(scenes):
    """Independent of context_stats: the same nearest-neighbour classifier, trained on half the scenes
    (farm and wild), tells agriculture from rangeland in blind patches of the other half from the colour
    statistics of the 3x window, but not from those of the patch."""
    images, labels = scenes
    rows = [list(window_features(im, lab)) for im, lab in zip(images, labels)]
    # Scene types alternate, so split in pairs: both halves hold farm and wild scenes.
    train = [r for i, scene in enumerate(rows) if i % 4 < 2 for r in scene]
    test = [r for i, scene in enumerate(rows) if i % 4 >= 2 for r in scene]
    assert 0.2 < np.mean([r[2] == syn.AGRICULTURE for r in test]) < 0.8
    assert len(train) > 40 and len(test) > 40
    patch, window = knn_accuracy(train, test, 0), knn_accuracy(train, test, 1)
    assert patch < 0.75, patch
    assert window > 0.9, window


def _border_share(label: np.ndarray) -> float:
    """Share of pixels whose right or lower neighbour has another class."""
    return float(((label[:, 1:] != label[:, :-1])[:-1] | (label[1:] != label[:-1])[:, :-1]).mean())


def test_detail_makes_borders_finer_and_keeps_the_scene_rule():
    plain = [syn.make_scene(syn.scene_rng(0, "train", i), 192, farm=i % 2 == 0)[1] for i in range(4)]
    fine = [syn.make_scene(syn.scene_rng(0, "train", i), 192, farm=i % 2 == 0, detail=0.5)[1] for i in range(4)]
    assert np.mean([_border_share(x) for x in fine]) > 2 * np.mean([_border_share(x) for x in plain])
    for i, label in enumerate(fine):  # fields are agriculture in farm scenes, rangeland in wild ones
        assert not np.isin(label, [syn.RANGELAND if i % 2 == 0 else syn.AGRICULTURE]).any()
    with pytest.raises(ValueError, match="detail must be 0 or more"):
        syn.generate("unused", 1, 0, 0, 64, seed=0, detail=-1)
