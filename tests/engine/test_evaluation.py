"""``evaluate_dataset``'s boundary and seam scores, against direct computations on small masks: with a
predictor that replays given masks in bands of chosen heights, and with the real predictor."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from dataset.classes import DEEPGLOBE, ClassTable
from engine.evaluation import SEAM_PX, evaluate_dataset, format_scores
from pipeline.config import PipelineConfig
from pipeline.grid import patch_starts
from pipeline.predictor import Predictor
from tests.utils.test_metrics import blocky, naive_biou
from tools.stand_in import StandIn
from utils.distributed import DistInfo
from utils.metrics import ConfusionMatrix

pytestmark = pytest.mark.usefixtures("one_thread")

THREE = ClassTable("three", ("other", "a", "b"), np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8),
                   unscored=0)
SIDE, PATCH = 200, 120  # patch starts 0, 40, 80: lines at 40, 80, 120 and 160 on both axes
CPU = torch.device("cpu")


class Items(Dataset):
    """Labelled items whose image's first channel is the prediction that ``Replay`` hands out."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        pred, label = self.pairs[i]
        return {"id": f"i{i}", "image": pred.expand(3, -1, -1).clone(), "label": label, "path": f"i{i}.png"}


class Replay:
    """A predictor that hands out each image's first channel as its mask, in bands of ``heights`` rows
    (cycled), as ``Predictor.mask_bands`` does."""

    def __init__(self, n_class: int, heights: list[int]) -> None:
        self.net = SimpleNamespace(n_class=n_class, eval=lambda: None)
        self.cfg = SimpleNamespace(size_p=PATCH)
        self.heights = heights

    def mask_bands(self, image: torch.Tensor, tta: bool = False):
        mask, top, i = image[0], 0, 0
        while top < mask.shape[0]:
            rows = min(self.heights[i % len(self.heights)], mask.shape[0] - top)
            yield top, mask[top:top + rows]
            top, i = top + rows, i + 1


def evaluate(pairs, heights=(SIDE,), classes=THREE, boundary_px=3) -> dict:
    replay = Replay(classes.n_class, list(heights))
    return evaluate_dataset(replay, Items(pairs), CPU, DistInfo(), tta=False, classes=classes,
                            boundary_px=boundary_px)[0]


def seam_mask(height: int, width: int, size: int) -> torch.Tensor:
    """bool (height, width): within SEAM_PX of a patch start or end inside the image, pixel by pixel."""
    def near(length: int) -> torch.Tensor:
        starts = patch_starts(length, size)
        edges = [e for s in starts for e in (s, s + size) if 0 < e < length]
        centres = torch.arange(length) + 0.5
        return torch.tensor([any(abs(c - e) < SEAM_PX for e in edges) for c in centres.tolist()])
    return near(height)[:, None] | near(width)[None, :]


def direct_accuracies(pairs, size: int = PATCH) -> tuple[float, float]:
    right = torch.zeros(2, dtype=torch.int64)
    total = torch.zeros(2, dtype=torch.int64)
    for pred, label in pairs:
        seam = seam_mask(*label.shape, size)
        for i, region in enumerate((seam, ~seam)):
            right[i] += int((pred == label)[region].sum())
            total[i] += int(region.sum())
    return float(right[0] / total[0]), float(right[1] / total[1])


def scene(seed: int) -> torch.Tensor:
    return blocky(SIDE, SIDE, 3, seed, cell=25)


def test_a_perfect_prediction_scores_one_everywhere():
    label = scene(0)
    s = evaluate([(label.clone(), label)])
    assert s["boundary_iou"] == [1.0, 1.0, 1.0] and s["mboundary_iou"] == 1.0
    assert (s["seam_accuracy"], s["off_seam_accuracy"], s["accuracy"], s["miou"]) == (1.0, 1.0, 1.0, 1.0)
    assert (s["boundary_px"], s["seam_px"], s["skipped"]) == (3, 8, 0)
    table = format_scores(s, THREE)
    assert "BIoU" in table and "mBIoU" in table and "seam accuracy" in table and "off seam" in table


def test_a_wrong_seam_along_a_grid_line_lowers_only_the_seam_band_accuracy():
    label = scene(1)
    pred = label.clone()
    pred[:, 79:81] = (label[:, 79:81] + 1) % 3  # both sides of the line where the third patch starts
    s = evaluate([(pred, label)])
    seam_pixels = SIDE * SIDE - (SIDE - 4 * 2 * SEAM_PX) ** 2
    assert s["off_seam_accuracy"] == 1.0
    assert s["seam_accuracy"] == pytest.approx(1 - 2 * SIDE / seam_pixels)
    assert (s["seam_accuracy"], s["off_seam_accuracy"]) == pytest.approx(direct_accuracies([(pred, label)]))


@pytest.mark.parametrize("heights", [(1,), (7,), (3, 50, 1), (SIDE,)])
def test_bands_of_any_height_give_the_scores_of_direct_computations(heights):
    pairs = [(scene(2), scene(3)), (blocky(90, 130, 3, 4, cell=9), blocky(90, 130, 3, 5, cell=9))]
    s = evaluate(pairs, heights)
    whole = evaluate(pairs)
    assert s == whole
    # Boundary IoU over several images sums their counts: check the per-image definition on each alone.
    for pred, label in pairs:
        alone = evaluate([(pred, label)], heights)
        assert alone["boundary_iou"] == pytest.approx(naive_biou(pred, label, 3, 3))
    assert (s["seam_accuracy"], s["off_seam_accuracy"]) == pytest.approx(direct_accuracies(pairs))


def test_the_unscored_class_is_left_out_and_boundary_px_is_passed_on():
    pred, label = scene(6), scene(7)
    s = evaluate([(pred, label)], boundary_px=2)
    assert s["boundary_px"] == 2
    assert s["boundary_iou"] == pytest.approx(naive_biou(pred, label, 3, 2))
    assert s["mboundary_iou"] == pytest.approx(sum(s["boundary_iou"][1:]) / 2)


@pytest.mark.parametrize("mode", [1, 0])
def test_the_real_predictor_scores_what_its_whole_prediction_scores(mode):
    # Mode 0 has no patch grid: its seam band is that of size_p all the same.
    net = StandIn(mode, seed=3).eval()
    predictor = Predictor(net, PipelineConfig(size_p=64, size_g=64, context=2, sub_batch_size=4))
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 150, 170), dtype=torch.uint8, generator=g) for _ in range(2)]
    labels = [blocky(150, 170, 7, seed, cell=20) for seed in range(2)]
    pairs = [(predictor.predict(image), label) for image, label in zip(images, labels)]
    data = [{"id": str(i), "image": image, "label": label, "path": ""} for i, (image, label) in
            enumerate(zip(images, labels))]
    s, _ = evaluate_dataset(predictor, data, CPU, DistInfo(), tta=False, classes=DEEPGLOBE)
    confusion = ConfusionMatrix(7)
    for pred, label in pairs:
        confusion.update(pred, label)
    assert s["miou"] == pytest.approx(confusion.scores(0)["miou"])
    assert (s["seam_accuracy"], s["off_seam_accuracy"]) == pytest.approx(direct_accuracies(pairs, 64))
    for (pred, label), image in zip(pairs, images):
        alone, _ = evaluate_dataset(predictor, [{"id": "x", "image": image, "label": label, "path": ""}], CPU,
                                    DistInfo(), tta=False, classes=DEEPGLOBE)
        assert alone["boundary_iou"] == pytest.approx(naive_biou(pred, label, 7, 3))
