"""Confusion matrix and the scores computed from it.

Rows are the true class, columns the predicted class; every labelled pixel counts, the unscored class
included, as in the released evaluations. From the matrix M (n x n), with u the unscored class
(DeepGlobe's "unknown", Inria's background; class 0 in both releases, or none):
- IoU_c = M[c,c] / (sum_j M[c,j] + sum_i M[i,c] - M[c,c]), and 0 when class c is absent from both
  prediction and target;
- mIoU = mean of IoU_c over c != u (absent classes still counted as 0): for Inria the building IoU;
- F1_c = 2 M[c,c] / (sum_j M[c,j] + sum_i M[i,c]) (0 when absent from both); f1 = mean over c != u;
- accuracy = trace(M) / sum(M).

Boundary IoU (Cheng et al., CVPR 2021), with a fixed distance d (``boundary_px``) in pixels. The inner
boundary G_d of class c in the label is the set of its pixels that have a pixel of another class in
their (2d+1) x (2d+1) square (Chebyshev distance <= d); P_d likewise in the prediction. The image
border is not a contour: the square is clipped to the image (the paper's reference code pads the mask
with zeros before eroding, and so counts the border; here the edge of a scene is no class border). Then
- BIoU_c = |G_d(c) & P_d(c)| / |G_d(c) | P_d(c)|, and 0 when class c has no boundary pixel in either
  (absent, or covering the whole image);
- mBIoU = mean of BIoU_c over c != u, classes without boundary still counted as 0 (the mIoU rule).

Unlabelled pixels. Every counter takes an ``ignore_index`` (``utils.labels.IGNORE_INDEX`` when the class
table has unlabelled pixels, else None): target pixels of that value count nowhere, neither in the
confusion matrix nor in the region accuracies, and are in no boundary set; the edge of the labelled
area is no contour either (a pixel is on its class's inner boundary when another CLASS lies within d).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from utils.errors import ConfigError


def _check_classes(pred: torch.Tensor, target: torch.Tensor, n_class: int, ignore_index: int | None = None) -> None:
    """ValueError unless ``pred`` and ``target`` are integer class maps of one shape with values in
    0..n_class-1, the target's also ``ignore_index`` (TypeError for floating-point maps)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("prediction and target must hold integer class indices")
    if pred.numel() == 0:
        return
    if ignore_index is not None:
        target = torch.where(target == ignore_index, 0, target)
    bounds = torch.stack([torch.minimum(pred.min().long(), target.min().long()),
                          torch.maximum(pred.max().long(), target.max().long())])
    low, high = bounds.tolist()
    if low < 0 or high >= n_class:
        raise ValueError(f"class indices must lie in 0..{n_class - 1}, found {low}..{high}")


class ConfusionMatrix:
    """Running int64 confusion matrix (n_class, n_class) kept on ``device`` (no host transfers
    while updating); target pixels equal to ``ignore_index`` are not counted."""

    def __init__(self, n_class: int, device: torch.device | str | None = None, ignore_index: int | None = None):
        if n_class < 2:
            raise ValueError(f"a confusion matrix needs at least 2 classes, got {n_class}")
        self.n_class = n_class
        self.ignore_index = ignore_index
        self.matrix = torch.zeros((n_class, n_class), dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Forget all counts."""
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count pixels: pred and target are integer class maps of the same shape (any shape).

        Values outside 0..n_class-1 (other than an ignored target) raise ValueError (they would
        otherwise land in another cell).
        """
        _check_classes(pred, target, self.n_class, self.ignore_index)
        pred = pred.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        target = target.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        if pred.numel() == 0:
            return
        cells = target * self.n_class + pred
        if self.ignore_index is not None:
            cells = cells[target != self.ignore_index]
        counts = torch.bincount(cells, minlength=self.n_class * self.n_class)
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


def _window_extreme(classes: torch.Tensor, d: int, op: Callable) -> torch.Tensor:
    """``op`` (torch.maximum or torch.minimum) of ``classes`` (h, W) over each pixel's (2d+1)-square
    clipped to the map: (h, W), same dtype. Separable: 2d shifted comparisons along each axis."""
    for dim in (0, 1):
        n = classes.shape[dim]
        out = classes.clone()
        for k in range(1, min(d, n - 1) + 1):
            head, tail = out.narrow(dim, 0, n - k), out.narrow(dim, k, n - k)
            op(head, classes.narrow(dim, k, n - k), out=head)
            op(tail, classes.narrow(dim, 0, n - k), out=tail)
        classes = out
    return classes


def inner_boundary(classes: torch.Tensor, d: int, ignore_index: int | None = None) -> torch.Tensor:
    """bool (h, W): True at the pixels of ``classes`` (integer (h, W)) that have a pixel of another class
    within Chebyshev distance ``d`` inside the map, i.e. every class's inner boundary of width d; pixels
    beyond the map's edges do not count (its border is not a contour), nor do pixels of ``ignore_index``
    (no class: the edge of the labelled area is no contour; the ignored pixels themselves come out True
    or False, callers leave them out)."""
    if ignore_index is None:
        return _window_extreme(classes, d, torch.maximum) != _window_extreme(classes, d, torch.minimum)
    ignored = classes == ignore_index
    values = classes.long()
    high = _window_extreme(torch.where(ignored, -1, values), d, torch.maximum)
    low = _window_extreme(torch.where(ignored, ignore_index, values), d, torch.minimum)
    return high != low


class BoundaryCounts:
    """Running Boundary IoU counts (see the module doc), kept on ``device`` as ``counts``: int64
    (2, n_class), row 0 the intersections |G_d(c) & P_d(c)|, row 1 the unions |G_d(c) | P_d(c)|.

    Images are fed top to bottom in bands of any height (``update``): a row is counted once the
    ``boundary_px`` rows below it have come or the image has ended, and only the rows still needed (at
    most 2 x boundary_px of them) are kept between bands, so the counts equal those of the whole image
    in one piece and memory does not grow with the image.
    """

    def __init__(self, n_class: int, boundary_px: int = 3, device: torch.device | str | None = None,
                 ignore_index: int | None = None):
        if n_class < 2:
            raise ValueError(f"boundary counts need at least 2 classes, got {n_class}")
        if boundary_px < 1:
            raise ConfigError(f"`boundary_px` must be at least 1 pixel (got {boundary_px})")
        self.n_class = n_class
        self.ignore_index = ignore_index
        self.boundary_px = boundary_px
        self.counts = torch.zeros((2, n_class), dtype=torch.int64, device=device)
        self._forget_image()

    def _forget_image(self) -> None:
        self._pred: torch.Tensor | None = None  # rows kept from earlier bands: context above and uncounted rows
        self._target: torch.Tensor | None = None
        self._kept_top = 0  # image row of the first kept row
        self._counted = 0  # image row of the first row not counted yet
        self._end = 0  # image row after the last row received (0: no image under way)

    def update(self, pred: torch.Tensor, target: torch.Tensor, top: int = 0, height: int | None = None) -> None:
        """Count rows ``top`` .. ``top + h - 1`` of an image of ``height`` rows (None: these rows end it).

        pred, target: integer class maps (h, W) of one shape, values in 0..n_class-1 (the target's also
        ``ignore_index``: the prediction there is masked out too) (ValueError otherwise; TypeError when
        floating point). Bands of an image come in order and the same width:
        ``top`` is 0 for an image's first band and the previous band's end after it, else ValueError.
        """
        _check_classes(pred, target, self.n_class, self.ignore_index)
        if pred.dim() != 2:
            raise ValueError(f"boundary counts take (h, W) class maps, got shape {tuple(pred.shape)}")
        rows = pred.shape[0]
        end = top + rows
        height = end if height is None else height
        if top != self._end or end > height:
            raise ValueError(f"bands must come in order within the image: expected rows from {self._end} of at most "
                             f"{height}, got rows {top}..{end - 1}")
        pred = pred.to(self.counts.device)
        target = target.to(self.counts.device)
        if self.ignore_index is not None:  # both maps see the same labelled area
            pred = torch.where(target == self.ignore_index, target, pred.to(target.dtype))
        if self._pred is not None:
            if self._pred.shape[1] != pred.shape[1]:
                raise ValueError(f"band width {pred.shape[1]} differs from the image's {self._pred.shape[1]}")
            pred, target = torch.cat([self._pred, pred]), torch.cat([self._target, target])
        first, d = self._kept_top, self.boundary_px
        final = height if end == height else end - d  # rows [self._counted, final) can be counted now
        if final > self._counted:
            # Kept rows reach d rows above the first uncounted row (or the image top), and the rows
            # counted here lie d rows above the end (or reach the image bottom): the clipped squares
            # seen here are those of the whole image.
            truth_edge, pred_edge = inner_boundary(target, d, self.ignore_index), inner_boundary(pred, d, self.ignore_index)
            if self.ignore_index is not None:
                labelled = target != self.ignore_index
                truth_edge &= labelled
                pred_edge &= labelled
            a, b = self._counted - first, final - first
            self._count(pred[a:b], target[a:b], pred_edge[a:b], truth_edge[a:b])
            self._counted = final
        if end == height:
            self._forget_image()
            return
        keep = max(0, self._counted - d - first)
        self._pred, self._target = pred[keep:].clone(), target[keep:].clone()
        self._kept_top, self._end = first + keep, end

    def _count(self, pred: torch.Tensor, target: torch.Tensor, pred_edge: torch.Tensor,
               truth_edge: torch.Tensor) -> None:
        n = self.n_class
        truth = torch.bincount(target[truth_edge].long(), minlength=n)
        predicted = torch.bincount(pred[pred_edge].long(), minlength=n)
        both = torch.bincount(target[truth_edge & pred_edge & (pred == target)].long(), minlength=n)
        self.counts[0] += both
        self.counts[1] += truth + predicted - both

    def all_reduce_(self) -> BoundaryCounts:
        """Sum the counts over all torch.distributed processes; nothing happens when not distributed."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)
        return self

    def scores(self, unscored: int | None = 0) -> dict:
        """dict(boundary_iou: list of n floats, mboundary_iou: float (without ``unscored``), boundary_px:
        int); see the module doc. ValueError while an image's bands are under way (its last rows are
        not counted yet)."""
        if self._end:
            raise ValueError(f"the image under way has come up to row {self._end} only; pass its remaining bands")
        inter, union = self.counts.to("cpu", torch.float64)
        biou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        scored = torch.ones(self.n_class, dtype=torch.bool)
        if unscored is not None:
            scored[unscored] = False
        return {"boundary_iou": [float(v) for v in biou], "mboundary_iou": float(biou[scored].mean()),
                "boundary_px": self.boundary_px}


class RegionAccuracy:
    """Pixel accuracy inside and outside a region, from running int64 counts ``counts`` (2, 2) on
    ``device``: row 0 inside, row 1 outside; column 0 correct pixels, column 1 all pixels."""

    def __init__(self, device: torch.device | str | None = None, ignore_index: int | None = None):
        self.counts = torch.zeros((2, 2), dtype=torch.int64, device=device)
        self.ignore_index = ignore_index

    def update(self, pred: torch.Tensor, target: torch.Tensor, inside: torch.Tensor) -> None:
        """Count pixels: pred and target integer class maps of one shape, ``inside`` a bool map that
        broadcasts to it (True in the region); target pixels of ``ignore_index`` are not counted."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        device = self.counts.device
        target = target.to(device)
        correct = pred.to(device) == target
        inside = inside.to(device).expand_as(correct)
        if self.ignore_index is None:
            counted = torch.tensor(correct.numel(), device=device)
        else:
            labelled = target != self.ignore_index
            correct, inside, counted = correct & labelled, inside & labelled, labelled.sum()
        right_inside, all_inside, right = (correct & inside).sum(), inside.sum(), correct.sum()
        self.counts += torch.stack([torch.stack([right_inside, all_inside]),
                                    torch.stack([right - right_inside, counted - all_inside])])

    def all_reduce_(self) -> RegionAccuracy:
        """Sum the counts over all torch.distributed processes; nothing happens when not distributed."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)
        return self

    def accuracies(self) -> tuple[float | None, float | None]:
        """(accuracy inside, accuracy outside); None for a side without any pixel."""
        return tuple(float(right / total) if total > 0 else None for right, total in self.counts.tolist())
