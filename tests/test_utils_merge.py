import random

import pytest
import torch

from utils.grid import make_grid
from utils.merge import RollingCanvas, add_patches


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


@pytest.mark.parametrize("height,width,p", [(150, 120, 64), (64, 100, 64), (200, 70, 60)])
def test_rolling_canvas_equals_whole_canvas(height, width, p):
    grid = make_grid(height, width, p)
    boxes = grid.boxes()
    logits = integer_logits(len(boxes), 4, p, 1)
    reference = torch.zeros(4, height, width)
    add_patches(reference, logits, [t for t, _ in boxes], [l for _, l in boxes])

    canvas = RollingCanvas(4, height, width, "cpu")
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0], random.Random(i).random()))
    bands, peak = [], 0
    for n, i in enumerate(order):
        canvas.add(logits[i:i + 1], [boxes[i][0]], [boxes[i][1]])
        peak = max(peak, canvas._buffer.shape[1])
        upto = boxes[order[n + 1]][0] if n + 1 < len(order) else height
        released = canvas.release(upto)
        if released is not None:
            bands.append(released)
    assert canvas.release(height) is None
    assert bands[0][0] == 0
    for (y0, band), (y1, _) in zip(bands, bands[1:]):
        assert y0 + band.shape[1] == y1
    assert torch.equal(torch.cat([band for _, band in bands], dim=1), reference)
    assert peak <= p  # never more than one patch height of pending rows in this order


def test_rolling_canvas_rejects_patches_above_released_rows():
    canvas = RollingCanvas(2, 150, 100)
    canvas.add(torch.zeros(1, 2, 64, 64), [0], [0])
    canvas.release(30)
    with pytest.raises(ValueError):
        canvas.add(torch.zeros(1, 2, 64, 64), [10], [0])
    with pytest.raises(ValueError):
        canvas.add(torch.zeros(1, 2, 64, 64), [100], [0])
