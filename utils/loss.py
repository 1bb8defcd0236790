"""Focal loss as the released FCtL training uses it (gamma 3).

For every pixel, p is the softmax probability of the target class, clamped to [1e-7, 1 - 1e-7], and
the pixel's loss is -(1 - p)^gamma * log p; the loss is the mean over all pixels, class 0 included.
With ``ignore_index``, pixels whose target is that value add nothing (no loss, no gradient) and the
mean is over the other pixels (0 when none is left). log p is taken from ``log_softmax`` (clamping
log p to [log 1e-7, log(1 - 1e-7)] is the same as clamping p) so that confident wrong logits do not
give log(0).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-7


class FocalLoss(nn.Module):
    """Mean focal loss of logits (B, C, H, W) against int64 targets (B, H, W) with values in 0..C-1
    (or ``ignore_index``, when given: those pixels are left out of the mean).

    Computed in float32 whatever the logits' dtype. Returns a scalar tensor.
    """

    def __init__(self, gamma: float = 3.0, ignore_index: int | None = None):
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                "expected logits (B, C, H, W) and target (B, H, W), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        log_probs = F.log_softmax(logits.float(), dim=1)
        target = target.long()
        labelled = None if self.ignore_index is None else target != self.ignore_index
        if labelled is not None:
            target = torch.where(labelled, target, 0)
        log_p = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        log_p = log_p.clamp(math.log(EPS), math.log1p(-EPS))
        p = log_p.exp()
        loss = -((1.0 - p) ** self.gamma) * log_p
        if labelled is None:
            return loss.mean()
        # where() (not indexing) keeps the shapes static and gives ignored pixels an exact zero gradient.
        return torch.where(labelled, loss, 0.0).sum() / labelled.sum().clamp(min=1)
