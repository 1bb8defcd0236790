import random

import pytest
import torch

from utils.grid import make_grid
from utils.merge import BandMerger, add_patches


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
def test_band_merger_equals_whole_canvas(height, width, p):
    grid = make_grid(height, width, p)
    boxes = grid.boxes()
    logits = integer_logits(len(boxes), 4, p, 1)
    reference = torch.zeros(4, height, width)
    add_patches(reference, logits, [t for t, _ in boxes], [l for _, l in boxes])

    merger = BandMerger(4, height, width, p, "cpu")
    bands = []
    rng = random.Random(1)
    per_row = len(grid.lefts)
    for r, (top, lefts) in enumerate(grid.rows()):
        order = list(range(per_row))
        rng.shuffle(order)  # order inside a row does not matter
        row_logits = logits[r * per_row : (r + 1) * per_row][order]
        out = merger.add_row(top, [lefts[i] for i in order], row_logits)
        for y0, band in out:
            assert band.shape[0] == 4 and band.shape[2] == width and band.shape[1] <= p
        bands.extend(out)
    bands.extend(merger.finish())
    assert [y0 for y0, _ in bands] == sorted(y0 for y0, _ in bands)
    assert bands[0][0] == 0
    for (y0, band), (y1, _) in zip(bands, bands[1:]):
        assert y0 + band.shape[1] == y1
    assert torch.equal(torch.cat([band for _, band in bands], dim=1), reference)


def test_band_merger_rejects_wrong_rows():
    merger = BandMerger(2, 150, 100, 64)
    with pytest.raises(ValueError):
        merger.add_row(43, [0], torch.zeros(1, 2, 64, 64))
    with pytest.raises(ValueError):
        merger.finish()
