"""Focal loss as the released FCtL training uses it (gamma 3).

For every pixel, p is the softmax probability of the target class, clamped to [1e-7, 1 - 1e-7], and
the pixel's loss is -(1 - p)^gamma * log p; the loss is the mean over all pixels, class 0 included.
log p is taken from ``log_softmax`` (clamping log p to [log 1e-7, log(1 - 1e-7)] is the same as
clamping p) so that confident wrong logits do not give log(0).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-7


class FocalLoss(nn.Module):
    """Mean focal loss of logits (B, C, H, W) against int64 targets (B, H, W) with values in 0..C-1.

    Computed in float32 whatever the logits' dtype. Returns a scalar tensor.
    """

    def __init__(self, gamma: float = 3.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                "expected logits (B, C, H, W) and target (B, H, W), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        log_probs = F.log_softmax(logits.float(), dim=1)
        log_p = log_probs.gather(1, target.long().unsqueeze(1)).squeeze(1)
        log_p = log_p.clamp(math.log(EPS), math.log1p(-EPS))
        p = log_p.exp()
        return (-((1.0 - p) ** self.gamma) * log_p).mean()
