"""FCtL's adaptive fusion of the correlation branches (local / medium / large)."""

import torch
import torch.nn as nn


class AdaptiveFusion(nn.Module):
    """Per-element softmax weighting of n branch features.

    h_i = in_i(c_i) (Conv1x1 C->C); t = trans(concat h) (Conv1x1 nC->nC); split t into n C-channel parts;
    w_i = sigmoid(out_i(t_i)); the w_i are soft-maxed across branches elementwise and the result is
    sum_i softmax_i * c_i (the caller adds it to the patch features as a residual).
    Init: conv weights N(0, 0.01), biases 0, like the correlation blocks.
    Module names in_1..in_n, trans, out_1..out_n match the released checkpoint.
    """

    def __init__(self, channels: int, branches: int) -> None:
        super().__init__()
        self.channels = channels
        self.branches = branches
        for i in range(1, branches + 1):
            setattr(self, f"in_{i}", nn.Conv2d(channels, channels, kernel_size=1))
        self.trans = nn.Conv2d(branches * channels, branches * channels, kernel_size=1)
        for i in range(1, branches + 1):
            setattr(self, f"out_{i}", nn.Conv2d(channels, channels, kernel_size=1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: n tensors (B,C,h,w) -> (B,C,h,w)."""
        if len(feats) != self.branches:
            raise ValueError(f"AdaptiveFusion expects {self.branches} branches, got {len(feats)}")
        hidden = torch.cat([getattr(self, f"in_{i + 1}")(f) for i, f in enumerate(feats)], dim=1)
        parts = torch.split(self.trans(hidden), self.channels, dim=1)
        gates = torch.stack([torch.sigmoid(getattr(self, f"out_{i + 1}")(t)) for i, t in enumerate(parts)])
        weights = torch.softmax(gates, dim=0)
        return (weights * torch.stack(feats)).sum(dim=0)
