import pytest
import torch

from utils.learning_rate import poly_lr, set_lr


def test_poly_lr():
    assert poly_lr(5e-5, 0, 100) == pytest.approx(5e-5)
    assert poly_lr(5e-5, 50, 100) == pytest.approx(5e-5 * 0.5**0.9)
    assert poly_lr(5e-5, 100, 100) == 0.0
    assert poly_lr(5e-5, 120, 100) == 0.0
    assert poly_lr(1.0, 25, 100, power=2.0) == pytest.approx(0.5625)
    with pytest.raises(ValueError):
        poly_lr(1.0, 0, 0)
    with pytest.raises(ValueError):
        poly_lr(1.0, -1, 10)


def test_set_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=5e-5)
    set_lr(opt, 1e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]
