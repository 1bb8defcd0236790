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


def test_ignored_pixels_add_no_loss_and_no_gradient():
    from utils.labels import IGNORE_INDEX

    torch.manual_seed(1)
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 6))
    ignored = torch.rand(2, 5, 6) < 0.4
    target[ignored] = IGNORE_INDEX
    loss = FocalLoss(gamma=3.0, ignore_index=IGNORE_INDEX)(logits, target)
    # Direct: the focal terms of the labelled pixels only, averaged over them.
    p = torch.softmax(logits, 1).gather(1, target.clamp(max=3).unsqueeze(1)).squeeze(1).clamp(1e-7, 1 - 1e-7)
    direct = (-(1 - p) ** 3 * torch.log(p))[~ignored].mean()
    assert torch.allclose(loss, direct, atol=1e-6)
    loss.backward()
    assert (logits.grad.permute(0, 2, 3, 1)[ignored] == 0).all()
    assert (logits.grad.permute(0, 2, 3, 1)[~ignored].abs().sum(-1) > 0).all()


def test_ignore_index_changes_nothing_without_ignored_pixels_and_all_ignored_is_zero():
    from utils.labels import IGNORE_INDEX

    torch.manual_seed(2)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    assert torch.allclose(FocalLoss(ignore_index=IGNORE_INDEX)(logits, target), FocalLoss()(logits, target))
    blank = torch.full((1, 4, 4), IGNORE_INDEX)
    assert FocalLoss(ignore_index=IGNORE_INDEX)(logits, blank).item() == 0.0
