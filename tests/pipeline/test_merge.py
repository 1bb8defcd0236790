import random

import pytest
import torch

from pipeline.grid import make_grid
from pipeline.merge import add_patches


def integer_logits(n, c, p, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-50, 50, (n, c, p, p), generator=gen).float()


def test_add_patches_sums_overlaps():
    canvas = torch.zeros(2, 100, 100)
    logits = torch.ones(2, 2, 64, 64)
    add_patches(canvas, logits, [0, 36], [0, 36])
    assert canvas[0, 0, 0] == 1 and canvas[0, 50, 50] == 2 and canvas[1, 99, 99] == 1 and canvas[0, 0, 99] == 0
    assert canvas.sum() == 2 * 2 * 64 * 64
    with pytest.raises(TypeError):
        add_patches(torch.zeros(2, 100, 100, dtype=torch.float16), logits, [0, 36], [0, 36])
    with pytest.raises(ValueError):
        add_patches(canvas, logits, [0, 40], [0, 36])


def test_merge_order_does_not_matter():
    grid = make_grid(150, 120, 64)
    boxes = grid.boxes()
    logits = integer_logits(len(boxes), 3, 64, 0)
    reference = torch.zeros(3, 150, 120)
    add_patches(reference, logits, [t for t, _ in boxes], [l for _, l in boxes])
    rng = random.Random(0)
    for _ in range(3):
        order = list(range(len(boxes)))
        rng.shuffle(order)
        canvas = torch.zeros(3, 150, 120)
        for i in order:
            add_patches(canvas, logits[i : i + 1], [boxes[i][0]], [boxes[i][1]])
        assert torch.equal(canvas, reference)
