import torch

from utils.dihedral import VIEWS, from_view, to_view


def test_views():
    assert len(VIEWS) == 8 and len(set(VIEWS)) == 8
    assert VIEWS[0] == (False, 0)


def test_inverse_on_non_square():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    seen = []
    for view in VIEWS:
        y = to_view(x, view)
        assert y.shape[-2:] == ((5, 7) if view[1] % 2 == 0 else (7, 5))
        assert torch.equal(from_view(y, view), x)
        seen.append(y.flatten().tolist())
    assert len({tuple(s) for s in seen}) == 8


def test_view_geometry():
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert torch.equal(to_view(x, (True, 0)), torch.tensor([[3, 2, 1], [6, 5, 4]]))
    # a quarter turn counter-clockwise: the right column becomes the top row
    assert torch.equal(to_view(x, (False, 1)), torch.tensor([[3, 6], [2, 5], [1, 4]]))


def test_canvas_of_a_view_maps_back_whole():
    # a per-pixel "prediction" made in the view's frame maps back to the original pixels
    image = torch.rand(3, 6, 10)
    for view in VIEWS:
        canvas = to_view(image, view) * 2
        assert torch.equal(from_view(canvas, view), image * 2)
