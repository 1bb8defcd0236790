import pytest
import torch

from utils.metrics import ConfusionMatrix


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
