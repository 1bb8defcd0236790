import pytest
import torch

from pipeline.grid import PatchGrid, make_grid, pad_to_min, patch_starts
from utils.errors import ConfigError


def rule(length, p):
    """The spec's rule, written out independently."""
    n = 1
    while length > n * p:
        n += 1
    while p - (length - p) / (n - 1) < 50:
        n += 1
    step = (length - p) / (n - 1)
    return [round(x * step) for x in range(n - 1)] + [length - p]


def test_deepglobe_grid_is_6x6_at_stride_388():
    starts = patch_starts(2448, 508)
    assert starts == [0, 388, 776, 1164, 1552, 1940]
    grid = make_grid(2448, 2448, 508)
    assert len(grid) == 36
    assert grid.boxes()[:7] == [(0, 0), (0, 388), (0, 776), (0, 1164), (0, 1552), (0, 1940), (388, 0)]


@pytest.mark.parametrize("p", [64, 100, 508])
def test_matches_rule_and_covers(p):
    for length in range(p + 1, 5 * p, 7):
        starts = patch_starts(length, p)
        assert starts == rule(length, p)
        assert starts[0] == 0 and starts[-1] == length - p
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(0 <= g <= p - 50 + 1 for g in gaps), (length, starts)


def test_python_round_ties_to_even():
    # step = 8.5 -> round(8.5) = 8 (half-up would give 9); the original uses Python's round.
    assert patch_starts(81, 64) == [0, 8, 17]
    assert patch_starts(969, 508) == [0, 230, 461]


@pytest.mark.parametrize("length", [1, 30, 63, 64])
def test_short_side_gives_single_start(length):
    assert patch_starts(length, 64) == [0]


def test_non_square_grid_rows():
    grid = make_grid(100, 200, 64)
    assert isinstance(grid, PatchGrid)
    assert grid.tops == patch_starts(100, 64) and grid.lefts == patch_starts(200, 64)
    assert len(grid) == len(grid.tops) * len(grid.lefts) == len(grid.boxes())
    rows = grid.rows()
    assert [top for top, _ in rows] == grid.tops
    assert all(lefts == grid.lefts for _, lefts in rows)
    assert [(t, l) for t, ls in rows for l in ls] == grid.boxes()
    small = make_grid(40, 200, 64)
    assert small.tops == [0] and len(small) == len(small.lefts)


def test_invalid_sizes():
    with pytest.raises(ConfigError):
        patch_starts(100, 0)
    with pytest.raises(ConfigError):
        patch_starts(100, 50)  # can never overlap by 50 px
    with pytest.raises(ConfigError):
        patch_starts(0, 64)
    assert patch_starts(40, 50) == [0]


def test_pad_to_min():
    image = torch.arange(2 * 3 * 40 * 70, dtype=torch.float32).reshape(2, 3, 40, 70) + 1
    padded, size = pad_to_min(image, 64)
    assert size == (40, 70) and padded.shape == (2, 3, 64, 70)
    assert torch.equal(padded[..., :40, :], image)
    assert padded[..., 40:, :].abs().sum() == 0
    same, size = pad_to_min(image, 32)
    assert same is image and size == (40, 70)
    label = torch.ones(10, 20, dtype=torch.uint8)
    padded, _ = pad_to_min(label, 25)
    assert padded.shape == (25, 25) and padded.dtype == torch.uint8 and int(padded.sum()) == 200
    with pytest.raises(ConfigError):
        pad_to_min(label, 0)


def test_seam_band_marks_k_px_beside_every_patch_edge_inside_the_image():
    rows, columns = make_grid(2448, 1000, 508).seam_band(8)
    edges = [388, 508, 776, 896, 1164, 1284, 1552, 1672, 1940, 2060]  # starts and ends; 0 and 2448 are the border
    expected = torch.zeros(2448, dtype=torch.bool)
    for e in edges:
        expected[e - 8:e + 8] = True
    assert torch.equal(rows, expected)
    assert patch_starts(1000, 508) == [0, 246, 492]
    assert columns.nonzero().flatten().tolist() == [*range(238, 254), *range(484, 500), *range(500, 516),
                                                     *range(746, 762)]
    # One patch (a side no longer than the patch): no seam at all.
    rows, columns = make_grid(300, 508, 508).seam_band(8)
    assert rows.shape == (300,) and columns.shape == (508,) and not rows.any() and not columns.any()
