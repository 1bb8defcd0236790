import torch

from utils.loss import FocalLoss


def direct(logits, target, gamma):
    prob = torch.softmax(logits.double(), dim=1)
    p = prob.gather(1, target.unsqueeze(1)).squeeze(1).clamp(1e-7, 1 - 1e-7)
    return (-((1 - p) ** gamma) * torch.log(p)).mean()


def test_matches_direct_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, 6, generator=gen) * 3
    target = torch.randint(0, 7, (2, 5, 6), generator=gen)
    for gamma in (3.0, 0.0, 1.5):
        loss = FocalLoss(gamma)(logits, target)
        assert torch.allclose(loss.double(), direct(logits, target, gamma), rtol=1e-5, atol=1e-7)
    assert FocalLoss().gamma == 3.0


def test_gamma_zero_is_cross_entropy_and_extremes_are_finite():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 3, 3, generator=gen)
    target = torch.randint(0, 4, (1, 3, 3), generator=gen)
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(FocalLoss(0.0)(logits, target), ce, atol=1e-6)
    # a confident wrong answer hits the clamp: loss = (1 - 1e-7)^3 * -log(1e-7), not inf
    extreme = torch.zeros(1, 2, 1, 1)
    extreme[0, 0] = 200.0
    loss = FocalLoss()(extreme, torch.ones(1, 1, 1, dtype=torch.int64))
    assert torch.isfinite(loss) and abs(loss.item() - 16.118) < 1e-2
    logits.requires_grad_(True)
    FocalLoss()(logits, target).backward()
    assert torch.isfinite(logits.grad).all()
