"""Confusion matrix and the scores computed from it.

Rows are the true class, columns the predicted class; every labelled pixel counts, the unscored class
included, as in the released evaluations. From the matrix M (n x n), with u the unscored class
(DeepGlobe's "unknown", Inria's background; class 0 in both releases, or none):
- IoU_c = M[c,c] / (sum_j M[c,j] + sum_i M[i,c] - M[c,c]), and 0 when class c is absent from both
  prediction and target;
- mIoU = mean of IoU_c over c != u (absent classes still counted as 0): for Inria the building IoU;
- F1_c = 2 M[c,c] / (sum_j M[c,j] + sum_i M[i,c]) (0 when absent from both); f1 = mean over c != u;
- accuracy = trace(M) / sum(M).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Running int64 confusion matrix (n_class, n_class) kept on ``device`` (no host transfers
    while updating)."""

    def __init__(self, n_class: int, device: torch.device | str | None = None):
        if n_class < 2:
            raise ValueError(f"a confusion matrix needs at least 2 classes, got {n_class}")
        self.n_class = n_class
        self.matrix = torch.zeros((n_class, n_class), dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Forget all counts."""
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count pixels: pred and target are integer class maps of the same shape (any shape).

        Values outside 0..n_class-1 raise ValueError (they would otherwise land in another cell).
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("prediction and target must hold integer class indices")
        pred = pred.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        target = target.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        if pred.numel() == 0:
            return
        bounds = torch.stack([torch.minimum(pred.min(), target.min()), torch.maximum(pred.max(), target.max())])
        low, high = bounds.tolist()
        if low < 0 or high >= self.n_class:
            raise ValueError(f"class indices must lie in 0..{self.n_class - 1}, found {low}..{high}")
        counts = torch.bincount(target * self.n_class + pred, minlength=self.n_class * self.n_class)
        self.matrix += counts.reshape(self.n_class, self.n_class)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (e.g. from another worker) into this one."""
        if other.n_class != self.n_class:
            raise ValueError(f"cannot merge {other.n_class} classes into {self.n_class}")
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce_(self) -> ConfusionMatrix:
        """Sum the matrix over all torch.distributed processes; nothing happens when not distributed."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def scores(self, unscored: int | None = 0) -> dict:
        """dict(miou: float, iou: list of n floats, f1: float, f1_per_class: list of n floats, accuracy:
        float, unscored: int or None, confusion_matrix: n x n nested list of ints); see the module doc."""
        m = self.matrix.to("cpu", torch.float64)
        tp = torch.diagonal(m)
        true_count = m.sum(dim=1)
        pred_count = m.sum(dim=0)
        union = true_count + pred_count - tp
        both = true_count + pred_count
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.zeros_like(tp))
        f1 = torch.where(both > 0, 2 * tp / both.clamp(min=1), torch.zeros_like(tp))
        total = m.sum()
        scored = torch.ones(self.n_class, dtype=torch.bool)
        if unscored is not None:
            scored[unscored] = False
        return {
            "miou": float(iou[scored].mean()),
            "iou": [float(v) for v in iou],
            "f1": float(f1[scored].mean()),
            "f1_per_class": [float(v) for v in f1],
            "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
            "unscored": unscored,
            "confusion_matrix": self.matrix.cpu().tolist(),
        }
