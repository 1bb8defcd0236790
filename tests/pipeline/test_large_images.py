"""Images of any size in bounded memory: a 20000 x 20000 scene streamed to a PNG in its own process,
streamed bands against a whole canvas, the merger's memory bound, the mode-0 band upsampling.

Run as a script (``python tests/test_scale_large.py SIZE PNG``) this file is the worker of the large
test: it makes the image, streams it through ``Predictor.mask_bands`` into ``PngBandWriter``, checks
every band against the block colours' classes where the comparison is exact, and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import weakref
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset.classes import PALETTE, pack_rgb
from models.inputs import NetworkInputs
from models.refinement import RefinementNet, RefinementRecord
from pipeline.config import PipelineConfig
from pipeline.contexts import global_view
from pipeline.grid import patch_starts
from pipeline.merge import BandMerger, add_patches, argmax_classes
from pipeline.predictor import Predictor
from pipeline.refine import Refinement
from pipeline.views import job_rows
from tools.stand_in import StandIn
from utils.logging import process_memory_mb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LARGE = 20000
BLOCKS = 40  # the large image is BLOCKS x BLOCKS flat colours (500 px blocks)
PATCH = 508
RSS_LIMIT_MB = 3 * 1024


pytestmark = pytest.mark.usefixtures("one_thread")


def block_image(size: int, blocks: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """uint8 (3, size, size) image of blocks x blocks random flat colours, written in place row of blocks
    by row of blocks (no float and no second full-size copy). Returns (image, colours (3, b, b), side)."""
    gen = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (3, blocks, blocks), dtype=torch.uint8, generator=gen)
    side = -(-size // blocks)
    image = torch.empty((3, size, size), dtype=torch.uint8)
    line = colours.repeat_interleave(side, dim=2)[:, :, :size]  # (3, blocks, size): one row of each block row
    for i in range(blocks):
        image[:, i * side:(i + 1) * side] = line[:, i:i + 1]
    return image, colours, side


def exact_pixels(size: int, side: int, p: int) -> torch.Tensor:
    """Along one axis: the positions where the stand-in's mode-1 class is the class of the block's colour.

    The stand-in is two 3x3 convolutions (zero padding), so a pixel sees its 5 x 5 neighbourhood. A pixel
    at least 2 px inside its block and at least 2 px inside every patch that covers it gets from each of
    those patches the logits of a flat patch of its colour; their sum is that vector times the number of
    patches, whose argmax is the colour's class.
    """
    pos = torch.arange(size)
    ok = (pos % side >= 2) & (pos % side < side - 2)
    for start in patch_starts(size, p):
        ok[start:start + 2] = False
        ok[start + p - 2:start + p] = False
    return ok


def spread_classes(model: StandIn, colours: torch.Tensor) -> None:
    """Set the one-channel stand-in's weights so that the block colours fall into all 7 classes.

    A random one-channel stand-in gives a flat patch of any colour nearly always the same class. Its
    hidden value h is one number per flat colour; the head is made the 7 tangent lines
    2 h_c h - h_c^2 of h^2 at the 7 quantiles h_c of the colours' h, so class c wins around h_c.
    """
    flat = colours.reshape(3, -1).T.float().div(255)[:, :, None, None].expand(-1, -1, 5, 5).contiguous()
    with torch.no_grad():
        conv = model.encoder.conv
        raw = conv(flat)[:, 0, 2, 2]
        conv.bias += 0.1 - raw.min()  # every colour's h > 0: the ReLU keeps them apart
        h = torch.relu(conv(flat))[:, 0, 2, 2]
        centres = h.quantile(torch.linspace(0.5 / 7, 6.5 / 7, 7))
        model.head.weight.copy_((2 * centres / 9)[:, None, None, None].expand_as(model.head.weight))
        model.head.bias.copy_(-centres ** 2)


def colour_classes(model: torch.nn.Module, colours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, clear) per block colour: the stand-in's class at the centre of a flat 5 x 5 patch of that
    colour, and whether its top two logits differ by more than float rounding could bridge."""
    flat = colours.reshape(3, -1).T.float().div(255)[:, :, None, None].expand(-1, -1, 5, 5).contiguous()
    with torch.inference_mode():
        logits = model(flat)[:, :, 2, 2]
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * top2[:, 0].abs().clamp(min=1)
    shape = colours.shape[1:]
    return logits.argmax(1).to(torch.uint8).reshape(shape), clear.reshape(shape)


def _worker(size: int, png: str) -> dict:
    from dataset.io import PngBandWriter

    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "1")))  # the test machine's cores are shared
    model = StandIn(1, channels=1).eval()
    rss_start = process_memory_mb("VmRSS")
    image, colours, side = block_image(size, BLOCKS)
    spread_classes(model, colours)
    model = model.to(memory_format=torch.channels_last)
    predictor = Predictor(model, PipelineConfig(PATCH, PATCH, 3, 8))
    classes, clear = colour_classes(model, colours)
    ok_axis = exact_pixels(size, side, PATCH)
    col_block = torch.arange(size) // side
    # Per block row: the expected class of every column, and where that class is exactly comparable.
    want_rows = classes[:, col_block]
    check_rows = clear[:, col_block] & ok_axis
    compared = mismatched = 0
    expected_y0 = 0
    started = time.perf_counter()
    with PngBandWriter(png, size, size, level=1) as writer:
        for y0, band in predictor.mask_bands(image):
            assert y0 == expected_y0 and band.dtype == torch.uint8 and band.shape[1] == size
            y1 = expected_y0 = y0 + band.shape[0]
            for block in range(y0 // side, (y1 - 1) // side + 1):  # the block rows this band crosses
                r0, r1 = max(y0, block * side), min(y1, (block + 1) * side)
                rows = torch.nonzero(ok_axis[r0:r1]).flatten() + (r0 - y0)
                if len(rows):
                    got = band.index_select(0, rows)
                    check = check_rows[block]
                    compared += len(rows) * int(check.sum())
                    mismatched += int(((got != want_rows[block]) & check).sum())
            writer.write(band.numpy())
    seconds = time.perf_counter() - started
    return {"size": size, "rows": expected_y0, "seconds": seconds, "compared": compared, "mismatched": mismatched,
            "image_mb": image.numel() / 2**20, "rss_before_image_mb": rss_start,
            "peak_rss_mb": process_memory_mb("VmHWM"),
            "patches": predictor.patches_per_image(size, size, False),
            "classes": torch.bincount(classes.flatten().long(), minlength=7).tolist()}


def _png_rows(path: str) -> tuple[int, int, int, set]:
    """(width, height, rows decoded, colours seen in every 499th row) of a PNG, decompressed as a stream."""
    palette_codes = set(pack_rgb(PALETTE).tolist())
    seen: set = set()
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        length, kind = struct.unpack(">I4s", f.read(8))
        assert kind == b"IHDR"
        header = f.read(length)
        f.read(4)
        width, height, depth, colour = struct.unpack(">IIBB", header[:10])
        assert (depth, colour) == (8, 2)
        row_bytes = 1 + 3 * width
        inflate = zlib.decompressobj()
        pending, rows = b"", 0
        while True:
            length, kind = struct.unpack(">I4s", f.read(8))
            data = f.read(length)
            (crc,) = struct.unpack(">I", f.read(4))
            assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
            if kind == b"IEND":
                break
            if kind != b"IDAT":
                continue
            data = inflate.decompress(data)
            while data:
                chunk = pending + data[: 1 << 23]
                data = data[1 << 23:]
                n = len(chunk) // row_bytes
                block = np.frombuffer(chunk, np.uint8, n * row_bytes).reshape(n, row_bytes)
                assert not block[:, 0].any()  # filter type 0 on every row
                for i in range(n):
                    if (rows + i) % 499 == 0:
                        seen |= set(np.unique(pack_rgb(block[i, 1:].reshape(width, 3))).tolist())
                rows += n
                pending = chunk[n * row_bytes:]
        assert not pending and not inflate.unconsumed_tail
    assert seen <= palette_codes
    return width, height, rows, seen


@pytest.mark.slow
def test_a_20000_px_image_streams_to_png_in_bounded_memory(tmp_path):
    """Mode 1 stand-in, no TTA, through mask_bands and PngBandWriter, in its own process (its own peak RSS)."""
    png = tmp_path / "large_mask.png"
    out = subprocess.run([sys.executable, "-m", "tests.pipeline.test_large_images", str(LARGE), str(png)], capture_output=True,
                         text=True, timeout=900, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{LARGE}x{LARGE}: {r['patches']} patches in {r['seconds']:.1f}s; peak RSS {r['peak_rss_mb']:.0f} MB "
          f"(image {r['image_mb']:.0f} MB, RSS before the image {r['rss_before_image_mb']:.0f} MB); "
          f"{r['compared']} pixels compared, {r['mismatched']} differ")
    assert r["peak_rss_mb"] < RSS_LIMIT_MB
    assert r["rows"] == LARGE
    assert r["mismatched"] == 0 and r["compared"] > 0.5 * LARGE * LARGE
    width, height, rows, seen = _png_rows(str(png))
    assert (width, height, rows) == (LARGE, LARGE, LARGE)
    assert len(seen) == 7  # every class appears


class _Recording(Predictor):
    """A Predictor that also sums every sub-batch's logits into one whole canvas, in the order they come."""

    def start(self, height: int, width: int) -> None:
        self.canvas = torch.zeros(self.net.n_class, height, width)

    def _run(self, source, views, contexts_g, jobs):
        logits = super()._run(source, views, contexts_g, jobs)
        add_patches(self.canvas, torch.stack(logits), [t for _, t, _ in jobs], [l for _, _, l in jobs])
        return logits


@pytest.mark.parametrize("mode, shape, p, sub_batch, output", [
    pytest.param(1, (3000, 2000), 508, 8, "mask", marks=pytest.mark.slow),  # a 6-megapixel image, TTA
    pytest.param(4, (1000, 1500), 256, 7, "mask", marks=pytest.mark.slow),  # 1.5 megapixels, mode 4, TTA
    pytest.param(4, (1000, 1500), 256, 7, "logits", marks=pytest.mark.slow),
])
def test_streamed_bands_equal_the_whole_canvas_with_tta(mode, shape, p, sub_batch, output):
    """The same logits summed into one full canvas in one piece give the very same logits and class map."""
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    model = StandIn(mode, channels=2).eval()
    with torch.no_grad():  # centre each class's logit so that every class wins somewhere (and ties are near)
        x = image[:, :64, :64].float().div(255)[None]
        model.head.bias -= model(x, NetworkInputs(medium=x, global_context=model.encode_global(x))).mean((0, 2, 3))
    predictor = _Recording(model, PipelineConfig(p, 128, 3, sub_batch))
    predictor.start(*shape)
    bands = list((predictor.mask_bands if output == "mask" else predictor.logit_bands)(image, tta=True))
    assert [y0 for y0, _ in bands] == [0] + list(np.cumsum([b.shape[-2] for _, b in bands])[:-1])
    streamed = torch.cat([b for _, b in bands], dim=-2)
    if output == "mask":
        assert len(streamed.unique()) >= 3  # not a trivial map
        assert torch.equal(streamed, argmax_classes(predictor.canvas))
        assert torch.equal(streamed, predictor.canvas.argmax(0).to(torch.uint8))
    else:
        assert torch.equal(streamed, predictor.canvas)
    assert predictor.patches_per_image(*shape, tta=True) == len(predictor.jobs(*shape, predictor.views(True)))


def test_schedule_runs_every_patch_of_every_view_once_in_rows():
    model = StandIn(1).eval()
    predictor = Predictor(model, PipelineConfig(64, 48, 3, 5))
    height, width = 301, 517
    views = predictor.views(True)
    rows = list(job_rows(height, width, views, 64))
    jobs = [job for _, _, row in rows for job in row]
    assert len(jobs) == len(set(jobs)) == predictor.patches_per_image(height, width, True)
    ends = [end for end, _, _ in rows]
    assert ends == sorted(set(ends)) and ends[-1] == height
    previous_end = 0
    for end, bottom, row in rows:
        tops = [t for _, t, _ in row]
        lefts = [l for _, _, l in row]
        assert lefts == sorted(lefts)
        assert min(tops) == previous_end and max(tops) + 64 == bottom and max(tops) - min(tops) <= 64 // 8
        assert all(t + 64 <= height and l + 64 <= width for t, l in zip(tops, lefts))
        previous_end = end
    # With TTA the mirrored views' grid lines fall into the same rows: as many rows as one view has lines.
    assert len(rows) == len(patch_starts(height, 64))


@pytest.mark.parametrize("refine", [False, True])
def test_the_predictor_keeps_no_band_and_no_logits_past_their_turn(refine):
    """A consumer that drops each band holds one band at a time: no forward runs beside a band already
    handed out, nor beside the previous sub-batch's logits (nothing of the predictor keeps them)."""
    model = StandIn(4, channels=1).eval()
    refinement = None
    if refine:
        record = RefinementRecord(4, "stand_in", 7, "centred", None, "global")
        refinement = Refinement(RefinementNet(record).eval(), StandIn(0, channels=1).eval(), tile=64)
    logits_refs, band_refs, alive_at_forward = [], [], []

    class Watching(Predictor):
        def _run(self, source, views, build, jobs):
            alive_at_forward.append((sum(ref() is not None for ref in logits_refs),
                                     sum(ref() is not None for ref in band_refs)))
            logits = super()._run(source, views, build, jobs)
            logits_refs.extend(weakref.ref(patch) for patch in logits)
            return logits

    predictor = Watching(model, PipelineConfig(64, 48, 3, 3), refinement)
    image = torch.randint(0, 256, (3, 300, 170), dtype=torch.uint8)
    for output in ("mask", "confidence"):
        for _, band in predictor.mask_bands(image, confidence=output == "confidence"):
            band_refs.append(weakref.ref(band))
            del band
    assert len(band_refs) >= 8 and len(alive_at_forward) >= 10
    assert max(alive_at_forward) == (0, 0)


@pytest.mark.slow  # a wide image through the merger
def test_merger_holds_the_overlap_not_a_patch_height_of_the_width():
    """Held float values stay near (grid overlap) x width, far below (patch height) x width."""
    model = StandIn(1, channels=1).eval()
    p, height, width = 256, 256 + 3 * 206, 12000  # 4 grid rows at stride 206: the minimum overlap, 50 px
    predictor = Predictor(model, PipelineConfig(p, 64, 3, 16))
    predictor.merge_tile = 256
    tile = max(4 * p, predictor.merge_tile)
    seen = {"during": 0, "between": 0}
    add, end_row = BandMerger.add, BandMerger.end_row

    def counting_add(self, *args):
        add(self, *args)
        seen["during"] = max(seen["during"], self.held_values)

    def counting_end(self):
        out = end_row(self)
        seen["between"] = max(seen["between"], self.held_values)
        return out

    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    BandMerger.add, BandMerger.end_row = counting_add, counting_end
    try:
        bands = list(predictor.mask_bands(image))
    finally:
        BandMerger.add, BandMerger.end_row = add, end_row
    rows = list(job_rows(height, width, predictor.views(False), predictor.cfg.size_p))
    carry = max(bottom - end for end, bottom, _ in rows)
    assert carry == 50
    assert seen["between"] <= 7 * width * carry
    assert seen["during"] <= 7 * (width * carry + 2 * tile * p)
    assert seen["during"] < 7 * width * p / 2  # a rolling canvas of whole rows holds at least 7 * width * p
    assert max(b.shape[0] for _, b in bands) <= p
    assert torch.equal(torch.cat([b for _, b in bands]), argmax_classes(Predictor(model, predictor.cfg).logits(image)))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("spill", [False, True])
def test_band_merger_by_hand_equals_the_whole_canvas(channels_last, spill):
    """Rows of patches with uneven tops, a carried overlap, rows left over for finish(), both layouts,
    carried rows kept in memory or parked in the spill file."""
    gen = torch.Generator().manual_seed(5)
    height, width, p = 100, 300, 40
    rows = [(30, 40, [(0, 0), (0, 50), (0, 90), (0, 150), (0, 200), (0, 260)]),
            (60, 72, [(30, 0), (32, 40), (30, 100), (31, 150), (32, 255), (30, 260)])]
    reference = torch.zeros(3, height, width)
    merger = BandMerger(3, height, width, output="logits", tile=64, spill=spill)
    masks = BandMerger(3, height, width, output="mask", tile=64, spill=spill)
    bands, mask_bands = [], []
    for end, bottom, patches in rows:
        merger.begin_row(end, bottom)
        masks.begin_row(end, bottom)
        for top, left in patches:
            logits = torch.randint(-20, 20, (3, p, p), generator=gen).float()
            if channels_last:
                logits = logits.permute(1, 2, 0).contiguous().permute(2, 0, 1)
            add_patches(reference, logits[None], [top], [left])
            merger.add(logits, top, left)
            masks.add(logits, top, left)
        bands.append(merger.end_row())
        mask_bands.append(masks.end_row())
        # Only the carried rows stay, and with a spill file not even those.
        assert merger.held_values <= (0 if spill else 3 * width * (bottom - end))
    bands.append(merger.finish())
    mask_bands.append(masks.finish())
    assert merger.finish() is None
    assert [y0 for y0, _ in bands] == [0, 30, 60]
    assert torch.equal(torch.cat([b for _, b in bands], dim=1), reference)
    assert torch.equal(torch.cat([b for _, b in mask_bands]), argmax_classes(reference))
    with pytest.raises(ValueError, match="left to right"):
        fresh = BandMerger(3, height, width)
        fresh.begin_row(30, 40)
        fresh.add(torch.zeros(3, p, p), 0, 50)
        fresh.add(torch.zeros(3, p, p), 0, 10)
    with pytest.raises(ValueError, match="released"):
        fresh = BandMerger(3, height, width)
        fresh.begin_row(30, 40)
        fresh.end_row()
        fresh.begin_row(60, 70)
        fresh.add(torch.zeros(3, p, p), 20, 0)


def test_argmax_classes_is_torch_argmax_with_ties_in_both_layouts():
    torch.manual_seed(0)
    logits = torch.randint(-3, 3, (7, 40, 50)).float()  # many ties
    want = logits.argmax(0).to(torch.uint8)
    assert torch.equal(argmax_classes(logits), want)
    channels_last = logits.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert channels_last.stride(0) == 1
    assert torch.equal(argmax_classes(channels_last), want)
    assert torch.equal(argmax_classes(logits.to(torch.bfloat16)), logits.to(torch.bfloat16).argmax(0).to(torch.uint8))


def test_mode0_bands_equal_interpolating_the_global_logits():
    """Mode 0: the band-by-band two-tap upsampling equals interpolate() of the whole small logits."""
    torch.manual_seed(1)
    model = StandIn(0).eval()
    image = torch.randint(0, 256, (3, 700, 433), dtype=torch.uint8)
    predictor = Predictor(model, PipelineConfig(64, 48, 3, 4))
    predictor.band_values = 7 * 433 * 37  # bands of 37 rows
    bands = list(predictor.logit_bands(image))
    assert len(bands) == -(-700 // 37)
    with torch.inference_mode():
        small = model(global_view(image, 48))
        want = F.interpolate(small, size=(700, 433), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(torch.cat([b for _, b in bands], dim=1), want, rtol=1e-5, atol=1e-5)
    mask = predictor.predict(image)
    assert mask.shape == (700, 433) and mask.dtype == torch.uint8


if __name__ == "__main__":
    print(json.dumps(_worker(int(sys.argv[1]), sys.argv[2])))
