import pytest
import torch

from utils.augment import random_flip_rotate
from utils.dihedral import VIEWS, to_view


def same(a, b):
    return a.shape == b.shape and torch.equal(a, b)


def test_image_and_label_move_together():
    label = torch.arange(5 * 7).reshape(5, 7)
    image = torch.stack([label, label * 2, label * 3]).float()
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        out_image, out_label = random_flip_rotate(image, label, gen)
        assert out_label.dtype == label.dtype
        assert torch.equal(out_image, torch.stack([out_label, out_label * 2, out_label * 3]).float())
        matches = [v for v in VIEWS if same(to_view(label, v), out_label)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 8  # every flip/rotation outcome occurs


def test_deterministic_for_a_seed():
    image, label = torch.rand(3, 6, 6), torch.randint(0, 7, (6, 6))
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(123)
        runs.append([random_flip_rotate(image, label, gen) for _ in range(10)])
    for (i1, l1), (i2, l2) in zip(*runs):
        assert torch.equal(i1, i2) and torch.equal(l1, l2)


def test_size_mismatch():
    with pytest.raises(ValueError):
        random_flip_rotate(torch.rand(3, 6, 6), torch.zeros(5, 6), torch.Generator())
