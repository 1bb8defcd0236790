import pytest
import torch

from utils.errors import ConfigError
from utils.metrics import BoundaryCounts, ConfusionMatrix, RegionAccuracy, inner_boundary


def test_hand_computed_case():
    target = torch.tensor([[0, 1, 1], [2, 2, 2]])
    pred = torch.tensor([[0, 1, 2], [2, 2, 1]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    s = cm.scores()
    # class 1: tp 1, fn 1, fp 1 -> IoU 1/3, F1 1/2; class 2: tp 2, fn 1, fp 1 -> IoU 1/2, F1 2/3; class 3 absent -> 0
    assert s["iou"] == pytest.approx([1.0, 1 / 3, 1 / 2, 0.0])
    assert s["miou"] == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)
    assert s["f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["confusion_matrix"] == cm.matrix.tolist()


def test_class_zero_counts_and_is_left_out_of_miou():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1, 2]), torch.tensor([1, 0, 1, 2]))
    s = cm.scores()
    assert s["iou"] == pytest.approx([0.5, 0.5, 1.0])
    assert s["miou"] == pytest.approx(0.75)
    assert s["accuracy"] == pytest.approx(0.75)


def test_merge_reset_and_all_reduce_without_distributed():
    a, b, whole = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    pa, ta = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 1])
    pb, tb = torch.tensor([1, 1]), torch.tensor([1, 0])
    a.update(pa, ta)
    b.update(pb.to(torch.uint8), tb.to(torch.uint8))
    whole.update(torch.cat([pa, pb]), torch.cat([ta, tb]))
    a.merge(b)
    assert torch.equal(a.matrix, whole.matrix)
    assert a.all_reduce_() is a and torch.equal(a.matrix, whole.matrix)
    a.reset()
    assert a.matrix.sum() == 0
    assert a.scores()["accuracy"] == 0.0 and a.scores()["miou"] == 0.0


def test_rejects_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError):
        cm.update(torch.tensor([0.0]), torch.tensor([0]))


# --- Boundary IoU and region accuracy ---------------------------------------------------------------------

def naive_boundary(classes: torch.Tensor, d: int, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Offset by offset of the (2d+1)-square: is the pixel there (inside the image, and labelled when
    ``labelled`` is given) of another class? With ``labelled``, only labelled pixels can be True."""
    h, w = classes.shape
    labelled = torch.ones(h, w, dtype=torch.bool) if labelled is None else labelled
    out = torch.zeros(h, w, dtype=torch.bool)
    for dy in range(-d, d + 1):
        for dx in range(-d, d + 1):
            if abs(dy) >= h or abs(dx) >= w:
                continue
            ys, xs = slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))
            moved = slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx))
            out[ys, xs] |= (classes[ys, xs] != classes[moved]) & labelled[moved]
    return out & labelled


def naive_biou(pred: torch.Tensor, target: torch.Tensor, n: int, d: int) -> list[float]:
    """Boundary IoU per class straight from the definition, on one image."""
    g, p = naive_boundary(target, d), naive_boundary(pred, d)
    out = []
    for c in range(n):
        gc, pc = g & (target == c), p & (pred == c)
        union = int((gc | pc).sum())
        out.append(int((gc & pc).sum()) / union if union else 0.0)
    return out


def blocky(h: int, w: int, n: int, seed: int, cell: int = 4) -> torch.Tensor:
    """A uint8 class map of rectangular blobs (cells of ``cell`` px with some pixels changed)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, n, (h // cell + 1, w // cell + 1), generator=g)
    fine = coarse.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:h, :w].clone()
    noise = torch.rand(h, w, generator=g) < 0.05
    fine[noise] = torch.randint(0, n, (int(noise.sum()),), generator=g)
    return fine.to(torch.uint8)


def halves(h: int, w: int, split: int) -> torch.Tensor:
    """Class 1 left of column ``split``, class 2 from it on (class 0 absent)."""
    out = torch.full((h, w), 2, dtype=torch.uint8)
    out[:, :split] = 1
    return out


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_inner_boundary_and_boundary_iou_match_the_definition(d):
    for seed in range(3):
        target, pred = blocky(19, 23, 4, seed), blocky(19, 23, 4, seed + 10)
        assert torch.equal(inner_boundary(target, d), naive_boundary(target, d))
        counts = BoundaryCounts(4, d)
        counts.update(pred, target)
        assert counts.scores(None)["boundary_iou"] == pytest.approx(naive_biou(pred, target, 4, d))


def test_perfect_prediction_scores_one_and_the_image_border_is_no_contour():
    target = halves(10, 32, 16)
    counts = BoundaryCounts(3, 3)
    counts.update(target.clone(), target)
    s = counts.scores(unscored=0)
    assert s["boundary_iou"] == [0.0, 1.0, 1.0] and s["mboundary_iou"] == 1.0 and s["boundary_px"] == 3
    # Only the 3 columns beside the class border on either side, every row: the top, bottom, left and
    # right edges of the image add nothing.
    assert counts.counts.tolist() == [[0, 30, 30], [0, 30, 30]]
    one_class = BoundaryCounts(2, 1)
    one_class.update(torch.ones(5, 5, dtype=torch.uint8), torch.ones(5, 5, dtype=torch.uint8))
    assert one_class.scores(None)["boundary_iou"] == [0.0, 0.0]


def test_a_border_one_pixel_off_lowers_boundary_iou_clearly_and_miou_little():
    target, pred = halves(32, 32, 16), halves(32, 32, 17)
    confusion, counts = ConfusionMatrix(3), BoundaryCounts(3, 3)
    confusion.update(pred, target)
    counts.update(pred, target)
    miou = confusion.scores(0)["miou"]
    assert miou == pytest.approx((16 / 17 + 15 / 16) / 2)  # 0.94
    # class 1: truth columns 13..15, prediction 14..16; class 2: 16..18 and 17..19 -> 2 of 4 columns each
    assert counts.scores(0)["boundary_iou"] == pytest.approx([0.0, 0.5, 0.5])
    assert 1 - counts.scores(0)["mboundary_iou"] > 5 * (1 - miou)


def test_the_unscored_class_is_left_out_of_the_mean():
    target = blocky(16, 16, 3, 0)
    pred = target.clone()
    pred[target == 0] = 1  # class 0 entirely wrong, 1 and 2 partly
    counts = BoundaryCounts(3, 2)
    counts.update(pred, target)
    biou = counts.scores(None)["boundary_iou"]
    assert counts.scores(0)["mboundary_iou"] == pytest.approx((biou[1] + biou[2]) / 2)
    assert counts.scores(None)["mboundary_iou"] == pytest.approx(sum(biou) / 3)
    assert biou[0] == 0.0 and counts.counts[1, 0] > 0  # class 0 has a boundary in the truth: it counts as 0


@pytest.mark.parametrize("d", [1, 3, 4])
@pytest.mark.parametrize("heights", [[1], [2, 5], [3, 1, 7], [40]])
def test_streaming_in_bands_equals_the_whole_image(d, heights):
    whole, streamed = BoundaryCounts(5, d), BoundaryCounts(5, d)
    for seed, (h, w) in enumerate([(37, 23), (5, 9), (1, 6), (12, 1)]):
        target, pred = blocky(h, w, 5, seed), blocky(h, w, 5, seed + 100)
        whole.update(pred, target)
        top, i = 0, 0
        while top < h:
            rows = min(heights[i % len(heights)], h - top)
            streamed.update(pred[top:top + rows], target[top:top + rows], top=top, height=h)
            top, i = top + rows, i + 1
    assert torch.equal(streamed.counts, whole.counts)
    assert streamed.scores() == whole.scores()


def test_boundary_counts_refuse_misuse():
    with pytest.raises(ConfigError, match="`boundary_px` must be at least 1"):
        BoundaryCounts(3, 0)
    counts = BoundaryCounts(3, 2)
    target = blocky(8, 8, 3, 0)
    counts.update(target[:3], target[:3], top=0, height=8)
    with pytest.raises(ValueError, match="pass its remaining bands"):
        counts.scores()
    with pytest.raises(ValueError, match="in order"):
        counts.update(target[4:], target[4:], top=4, height=8)
    with pytest.raises(ValueError, match="band width"):
        counts.update(target[3:, :5], target[3:, :5], top=3, height=8)
    with pytest.raises(ValueError, match="0..2"):
        counts.update(target[3:] + 1, target[3:], top=3, height=8)
    with pytest.raises(TypeError):
        counts.update(target[3:].float(), target[3:], top=3, height=8)
    counts.update(target[3:], target[3:], top=3, height=8)
    assert counts.scores(None)["boundary_iou"] == pytest.approx([1.0, 1.0, 1.0])
    assert counts.all_reduce_() is counts


def test_region_accuracy_counts_inside_and_outside():
    target = torch.tensor([[0, 1, 1], [2, 2, 2]])
    pred = torch.tensor([[0, 1, 2], [2, 0, 2]])
    inside = torch.tensor([False, False, True])  # the last column, broadcast over the rows
    acc = RegionAccuracy()
    acc.update(pred, target, inside)
    assert acc.counts.tolist() == [[1, 2], [3, 4]]
    assert acc.accuracies() == (0.5, 0.75)
    assert acc.all_reduce_() is acc
    empty = RegionAccuracy()
    empty.update(pred, target, torch.zeros(2, 3, dtype=torch.bool))
    assert empty.accuracies() == (None, 4 / 6)


IGNORED = 255


def with_holes(classes: torch.Tensor, seed: int) -> torch.Tensor:
    """``classes`` with rectangles and single pixels set to the ignore value."""
    g = torch.Generator().manual_seed(seed)
    out = classes.clone()
    h, w = out.shape
    out[torch.rand(h, w, generator=g) < 0.1] = IGNORED
    out[h // 3: h // 2, : w // 2] = IGNORED
    return out


@pytest.mark.parametrize("d", [1, 3])
def test_ignored_pixels_count_in_no_score(d):
    for seed in range(3):
        clean, pred = blocky(21, 17, 4, seed), blocky(21, 17, 4, seed + 10)
        target = with_holes(clean, seed)
        labelled = target != IGNORED
        confusion = ConfusionMatrix(4, ignore_index=IGNORED)
        confusion.update(pred, target)
        direct = ConfusionMatrix(4)
        direct.update(pred[labelled], target[labelled])
        assert torch.equal(confusion.matrix, direct.matrix)
        counts = BoundaryCounts(4, d, ignore_index=IGNORED)
        counts.update(pred, target)
        g = naive_boundary(target, d, labelled)
        p = naive_boundary(pred, d, labelled)
        for c in range(4):
            gc, pc = g & (target == c), p & (pred == c)
            assert counts.counts[:, c].tolist() == [int((gc & pc).sum()), int((gc | pc).sum())]
        acc = RegionAccuracy(ignore_index=IGNORED)
        inside = torch.zeros(17, dtype=torch.bool)
        inside[5:9] = True
        acc.update(pred, target, inside)
        right = (pred == target) & labelled
        assert acc.counts.tolist() == [[int(right[:, 5:9].sum()), int(labelled[:, 5:9].sum())],
                                       [int(right.sum() - right[:, 5:9].sum()),
                                        int(labelled.sum() - labelled[:, 5:9].sum())]]


def test_the_edge_of_the_labelled_area_is_no_contour_and_streaming_holds_with_holes():
    target = torch.ones(12, 12, dtype=torch.uint8)
    target[:, 6:] = IGNORED
    pred = torch.ones(12, 12, dtype=torch.uint8)
    pred[:, 6:] = 0  # the unlabelled half predicted as another class: no score sees it
    counts = BoundaryCounts(2, 2, ignore_index=IGNORED)
    counts.update(pred, target)
    assert counts.counts.sum() == 0
    confusion = ConfusionMatrix(2, ignore_index=IGNORED)
    confusion.update(pred, target)
    assert confusion.scores(None)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="0..1"):
        ConfusionMatrix(2).update(pred, target)  # without ignore_index, 255 is no class
    whole, streamed = BoundaryCounts(5, 3, ignore_index=IGNORED), BoundaryCounts(5, 3, ignore_index=IGNORED)
    target, pred = with_holes(blocky(30, 13, 5, 4), 4), blocky(30, 13, 5, 5)
    whole.update(pred, target)
    for top in range(0, 30, 4):
        streamed.update(pred[top:top + 4], target[top:top + 4], top=top, height=30)
    assert torch.equal(whole.counts, streamed.counts)
