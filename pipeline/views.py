"""The test-time views as the pipeline runs them: boxes of each view's grid in the original frame, and
the order in which the jobs of all views are run.

Each of the 8 views (``utils.dihedral``) has its own patch grid, laid out in the view's frame as the
released system does. Every box of it is mapped back to the original frame (``view_box_to_original``),
so crops are taken from the one original image and no rotated copy is built.

Jobs (view, box) are independent, so sub-batches may mix views. They are produced lazily, sorted by
their top in the original frame (each view's grid lines merged with ``heapq.merge``), and grouped into
*rows*: consecutive grid lines whose tops lie within ``p // 8`` of the row's first top (with TTA the
mirrored views' lines come in pairs one pixel apart). The order is fixed by the geometry alone, so the
logits are summed in the same order whatever the sub-batch size.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from pipeline.grid import make_grid
from utils.dihedral import View

Job = tuple[int, int, int]  # (view index, top, left), the box in the original frame
Row = tuple[int, int, list[Job]]  # (end: rows above it are final after the row, bottom, jobs left to right)


def view_shape(height: int, width: int, view: View) -> tuple[int, int]:
    """Size of the image as seen in ``view`` (a 90/270 degree turn swaps the sides)."""
    return (width, height) if view[1] % 2 else (height, width)


def view_box_to_original(top: int, left: int, size: int, height: int, width: int, view: View) -> tuple[int, int]:
    """Top-left corner, in the original frame, of the square box at (top, left) of ``view``.

    ``to_view`` flips the columns and then turns the image k times by 90 degrees (torch.rot90 over the
    last two dims). We undo the turns one at a time, tracking the image size of each stage.
    """
    flip, k = view
    # Sizes before each turn: the flipped original is (height, width); each turn swaps them.
    sizes = [(height, width) if i % 2 == 0 else (width, height) for i in range(k + 1)]
    r0, c0, r1, c1 = top, left, top + size - 1, left + size - 1
    for i in range(k, 0, -1):
        _, w_in = sizes[i - 1]
        # rot90(k=1) maps an input pixel (r, c) to (w_in - 1 - c, r); invert: (a, b) -> (b, w_in - 1 - a).
        r0, c0 = c0, w_in - 1 - r0
        r1, c1 = c1, w_in - 1 - r1
    if flip:
        c0, c1 = width - 1 - c0, width - 1 - c1
    return min(r0, r1), min(c0, c1)


def view_lines(height: int, width: int, vi: int, view: View, p: int) -> Iterator[list[Job]]:
    """One view's jobs, one grid line (boxes sharing their top in the original frame) at a time,
    sorted by that top. An even number of quarter turns keeps the view's rows as rows (possibly
    reversed); an odd number makes the view's columns the original's rows."""
    vh, vw = view_shape(height, width, view)
    grid = make_grid(vh, vw, p)
    rows_are_rows = view[1] % 2 == 0
    outer, inner = (grid.tops, grid.lefts) if rows_are_rows else (grid.lefts, grid.tops)

    def box(a: int, b: int) -> tuple[int, int]:
        return (a, b) if rows_are_rows else (b, a)

    def top_of(a: int) -> int:
        return view_box_to_original(*box(a, inner[0]), p, height, width, view)[0]

    for a in sorted(outer, key=top_of):
        yield [(vi, *view_box_to_original(*box(a, b), p, height, width, view)) for b in inner]

def job_rows(height: int, width: int, views: list[View], p: int) -> Iterator[Row]:
    """The rows of jobs for an (already padded) image, top to bottom, each as (end, bottom, jobs).

    Grid lines of every view are merged by top (ties: view order) and gathered into rows while
    their top stays within ``size_p // 8`` of the row's first top; a row's jobs are sorted by left
    (stable). ``end`` is the next row's first top (or the height): no later job touches the rows
    above it. ``bottom`` is the row's last top + size_p. Lazy: memory is one grid line per view.
    """
    spread = p // 8
    lines = heapq.merge(*(view_lines(height, width, vi, v, p) for vi, v in enumerate(views)),
                        key=lambda line: line[0][1])
    current: list[Job] = []
    first = last = 0
    for line in lines:
        top = line[0][1]
        if current and top - first > spread:
            yield top, last + p, sorted(current, key=lambda job: job[2])
            current = []
        if not current:
            first = top
        current.extend(line)
        last = top
    if current:
        yield height, last + p, sorted(current, key=lambda job: job[2])
