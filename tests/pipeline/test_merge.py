import os
import random

import pytest
import torch

from pipeline import merge
from pipeline.grid import make_grid
from pipeline.merge import BandMerger, HannWindows, add_patches, argmax_classes, top_probability


def integer_logits(n, c, p, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-50, 50, (n, c, p, p), generator=gen).float()


def test_add_patches_sums_overlaps():
    canvas = torch.zeros(2, 100, 100)
    logits = torch.ones(2, 2, 64, 64)
    add_patches(canvas, logits, [0, 36], [0, 36])
    assert canvas[0, 0, 0] == 1 and canvas[0, 50, 50] == 2 and canvas[1, 99, 99] == 1 and canvas[0, 0, 99] == 0
    assert canvas.sum() == 2 * 2 * 64 * 64
    with pytest.raises(TypeError):
        add_patches(torch.zeros(2, 100, 100, dtype=torch.float16), logits, [0, 36], [0, 36])
    with pytest.raises(ValueError):
        add_patches(canvas, logits, [0, 40], [0, 36])


def test_merge_order_does_not_matter():
    grid = make_grid(150, 120, 64)
    boxes = grid.boxes()
    logits = integer_logits(len(boxes), 3, 64, 0)
    reference = torch.zeros(3, 150, 120)
    add_patches(reference, logits, [t for t, _ in boxes], [l for _, l in boxes])
    rng = random.Random(0)
    for _ in range(3):
        order = list(range(len(boxes)))
        rng.shuffle(order)
        canvas = torch.zeros(3, 150, 120)
        for i in order:
            add_patches(canvas, logits[i : i + 1], [boxes[i][0]], [boxes[i][1]])
        assert torch.equal(canvas, reference)


def hann_profile(start: int, length: int, p: int) -> torch.Tensor:
    """The hann merge's weights along one axis of a patch at ``start``, written out independently."""
    i = torch.arange(p, dtype=torch.float64)
    weights = torch.sin(torch.pi * i / (p - 1)) ** 2
    if start == 0:
        weights[: (p + 1) // 2] = 1
    if start + p == length:
        weights[p // 2:] = 1
    return weights


@pytest.mark.parametrize("p", [64, 65])
def test_hann_windows_taper_every_edge_but_those_on_the_canvas_border(p):
    windows = HannWindows(p)
    height, width = 3 * p, 2 * p
    for top in (0, 17, height - p):
        for left in (0, 5, width - p):
            window = windows(top, left, height, width)
            assert window.dtype == torch.float32 and window.shape == (p, p)
            expected = hann_profile(top, height, p)[:, None] * hann_profile(left, width, p)[None, :]
            torch.testing.assert_close(window.double(), expected, rtol=1e-6, atol=1e-7)
            assert window is windows(top, left, height, width)  # made once
    inner = windows(17, 5, height, width)
    assert inner[0].max() == 0 and inner[:, -1].max() == 0 and inner.max() <= 1
    assert torch.equal(inner, inner.flip(0)) and torch.equal(inner, inner.flip(1)) and torch.equal(inner, inner.T)
    assert torch.equal(windows(0, 0, p, p), torch.ones(p, p))  # a canvas of one patch: nothing tapered


def _stream(mergers, rows, patch_at, after_patch=None):
    """Every merger of ``mergers`` fed the same rows of (end, bottom, [(top, left), ...]), each patch and
    weight made by ``patch_at(top, left)``; ``after_patch(end)`` is called after each patch. Returns
    each merger's (first row, band) list, the ``finish`` band last."""
    bands = {key: [] for key in mergers}
    for end, bottom, patches in rows:
        for merger in mergers.values():
            merger.begin_row(end, bottom)
        for top, left in patches:
            patch, weight = patch_at(top, left)
            for merger in mergers.values():
                merger.add(patch, top, left, weight)
            if after_patch is not None:
                after_patch(end)
        for key, merger in mergers.items():
            bands[key].append(merger.end_row())
    for key, merger in mergers.items():
        bands[key].append(merger.finish())
    return bands


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("score_rows", [64, 7])
def test_band_merger_mean_is_the_weighted_sums_over_the_summed_weights(spill, score_rows, monkeypatch):
    """Weighted patches with their weights as last channel, streamed in rows, against one whole canvas;
    pixels no weight reached come out 0, not NaN. The scores are the same made a few rows at a time."""
    monkeypatch.setattr(merge, "SCORE_ROWS", score_rows)
    gen = torch.Generator().manual_seed(3)
    height, width, p = 110, 300, 40
    windows = HannWindows(p)
    rows = [(30, 40, [(0, 0), (0, 50), (0, 90), (0, 150), (0, 200), (0, 260)]),
            (60, 72, [(30, 0), (32, 40), (30, 100), (31, 150), (32, 255), (30, 260)])]
    sums, weights = torch.zeros(3, height, width), torch.zeros(height, width)
    mergers = {output: BandMerger(3, height, width, output=output, tile=64, spill=spill)
               for output in ("mean", "confidence")}

    def patch_at(top, left):
        w = windows(top, left, height, width)
        patch = torch.randn(3, p, p, generator=gen) * w
        add_patches(sums, patch[None], [top], [left])
        add_patches(weights[None], w[None, None], [top], [left])
        return patch, w

    bands = _stream(mergers, rows, patch_at)
    mean, confidence = (torch.cat([band for _, band in bands[output]], dim=-2) for output in mergers)
    weighed = weights > 0  # not every covered pixel: this layout is no grid, so gaps and tapered edges stay 0
    assert weighed[:72].any() and not weighed[72:].any()
    assert torch.equal(mean, torch.where(weighed, sums / weights, torch.zeros(())))
    reached = confidence[1, :72]
    tiny = torch.finfo(torch.float32).tiny
    assert torch.equal(reached, top_probability(sums[:, :72], weights[:72].clamp(min=tiny)))
    assert torch.equal(confidence[0, :72], argmax_classes(sums[:, :72])) and not confidence[:, 72:].any()


@pytest.mark.parametrize("output", ["confidence", "probabilities"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_spilled_score_channels_wait_on_disk_until_the_band_is_handed_out(output, channels_last, monkeypatch):
    """With a spill file the score channels of a row are parked as its tiles are finalised: while the
    row's patches come the band in memory is the class map alone, and the bands handed out are those
    of the merger that keeps everything in memory, bit for bit (rows no patch reached included)."""
    monkeypatch.setattr(merge, "SCORE_ROWS", 16)  # several pieces per tile and row
    gen = torch.Generator().manual_seed(5)
    height, width, p = 100, 230, 40
    windows = HannWindows(p)
    rows = [(30, 40, [(0, 0), (0, 60), (0, 120), (0, 190)]), (64, 70, [(30, 0), (30, 70), (30, 150), (30, 190)])]
    mergers = {spill: BandMerger(4, height, width, output=output, tile=64, spill=spill) for spill in (False, True)}
    channels = 2 if output == "confidence" else 5

    def patch_at(top, left):
        w = windows(top, left, height, width)
        patch = torch.randn(4, p, p, generator=gen) * w
        return (patch.permute(1, 2, 0).contiguous().permute(2, 0, 1) if channels_last else patch), w

    def held(end):
        rows_open = end - mergers[True].y0
        assert mergers[True].band_bytes == rows_open * width
        assert mergers[False].band_bytes == channels * rows_open * width

    bands = _stream(mergers, rows, patch_at, held)
    assert mergers[True].band_bytes == mergers[False].band_bytes == 0
    for (y_kept, kept), (y_spilled, spilled) in zip(bands[False], bands[True]):
        assert y_kept == y_spilled and spilled.shape == kept.shape == (channels, kept.shape[1], width)
        assert torch.equal(spilled, kept)
    assert bands[True][0][1][1:].any() and not bands[True][-1][1][:, 70 - 64:].any()


@pytest.mark.parametrize("output", ["mask", "confidence", "probabilities"])
def test_the_scores_temporaries_go_back_to_the_system_before_the_next_patch(output, monkeypatch):
    """The softmax of a finished tile works on a few rows at a time, and its temporaries are small enough
    to come from glibc's heap: on the CPU the merger gives the heap back after every tile it scores, so
    they are not resident through the next forward. The class map alone (``mask``) makes none."""
    monkeypatch.setattr(merge, "SCORE_ROWS", 8)
    given_back = []
    monkeypatch.setattr(merge, "give_back_heap", lambda: given_back.append(True) or True)
    scored = []
    score = BandMerger._score
    monkeypatch.setattr(BandMerger, "_score", lambda self, j, head: scored.append(j) or score(self, j, head))
    gen = torch.Generator().manual_seed(2)
    rows = [(30, 40, [(0, 0), (0, 60), (0, 120), (0, 190)]), (64, 70, [(30, 0), (30, 70), (30, 150), (30, 190)])]
    merger = BandMerger(3, 100, 230, output=output, tile=64, spill=True)
    seen = []

    def after_patch(end):
        seen.append((len(scored), len(given_back)))  # every tile scored so far was followed by a give-back

    _stream({output: merger}, rows, lambda top, left: (torch.randn(3, 40, 40, generator=gen), None), after_patch)
    assert all(done == back for done, back in seen)
    if output == "mask":
        assert not scored and not given_back
    else:
        assert len(scored) == len(given_back) >= 2 * 4  # every tile of both rows


def test_a_spill_file_that_cannot_be_made_or_written_is_a_resource_error(tmp_path, monkeypatch):
    import errno

    from utils.errors import ResourceError

    with pytest.raises(ResourceError, match="missing .*TMPDIR"):
        merge.SpillFile(str(tmp_path / "missing"))
    spill = merge.SpillFile(str(tmp_path))

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(merge.os, "pwrite", full)
    with pytest.raises(ResourceError, match=f"in {tmp_path} .No space left on device.; free space there or set TMPDIR"):
        spill.put(0, torch.zeros(4, dtype=torch.uint8))
    spill.close()


def test_band_merger_takes_weights_only_for_the_weighted_outputs():
    """A patch carries the class logits alone; the weight channel is the merger's, filled by ``add``
    (1 per patch without a window), so a mean of constant patches is that constant."""
    merger = BandMerger(3, 40, 60, output="mean", tile=16)
    merger.begin_row(40, 40)
    with pytest.raises(ValueError, match=r"\(3, p, p\)"):
        merger.add(torch.ones(4, 40, 40), 0, 0)
    with pytest.raises(ValueError, match="weight of shape"):
        merger.add(torch.ones(3, 40, 40), 0, 0, torch.ones(30, 30))
    merger.add(torch.full((3, 40, 40), 2.0), 0, 0)
    merger.add(torch.full((3, 40, 40), 2.0), 0, 20)
    assert torch.equal(merger.end_row()[1], torch.full((3, 40, 60), 2.0))
    masks = BandMerger(3, 40, 60, output="mask")
    masks.begin_row(40, 40)
    with pytest.raises(ValueError, match="sums no weights"):
        masks.add(torch.ones(3, 40, 40), 0, 0, torch.ones(40, 40))
