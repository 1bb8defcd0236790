"""A scene read window by window gives exactly the prediction of the same scene held in memory."""

import numpy as np
import pytest
import torch

import pipeline.contexts as contexts
from pipeline.config import PipelineConfig
from pipeline.contexts import context_windows, global_view
from pipeline.predictor import Predictor
from pipeline.sources import TensorSource, WindowedSource
from tests.pipeline.array_reader import ArrayReader
from tools.stand_in import StandIn


def _scene(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)


@pytest.mark.parametrize("top,left,h,w", [(0, 0, 50, 60), (-30, -20, 80, 90), (200, 230, 90, 90), (-5, -5, 400, 400),
                                          (500, 500, 10, 10)])
def test_windowed_windows_equal_tensor_windows(top, left, h, w):
    image = _scene(260, 300)
    windowed = WindowedSource(ArrayReader(image), block=64, capacity=3)
    in_memory = TensorSource(torch.from_numpy(image))
    assert torch.equal(windowed.window(top, left, h, w), in_memory.window(top, left, h, w))


def test_the_cache_reads_each_block_once_while_it_fits():
    reader = ArrayReader(_scene(256, 256))
    source = WindowedSource(reader, block=64, capacity=16)
    for _ in range(3):
        source.window(0, 0, 256, 256)
    assert reader.calls == 16 == source.reads


@pytest.mark.parametrize("mode", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("tta", [False, pytest.param(True, marks=pytest.mark.slow)])  # 8 views: slow
def test_windowed_prediction_equals_in_memory(mode, tta):
    image = _scene(230, 270, seed=mode)
    model = StandIn(mode).eval()
    predictor = Predictor(model, PipelineConfig(size_p=64, size_g=48, context=3, sub_batch_size=5))
    reference = predictor.predict(torch.from_numpy(image), tta=tta)
    # A cache far smaller than a row of windows: blocks are evicted and read again, results must not move.
    windowed = predictor.predict(WindowedSource(ArrayReader(image), block=48, capacity=4), tta=tta)
    assert torch.equal(windowed, reference)
    confident = torch.cat([b for _, b in predictor.mask_bands(WindowedSource(ArrayReader(image)), tta, confidence=True)],
                          dim=1)
    assert torch.equal(confident[0], reference)


def test_windowed_scene_smaller_than_a_patch_is_padded_like_a_tensor():
    image = _scene(40, 90)
    predictor = Predictor(StandIn(4).eval(), PipelineConfig(64, 48, 3, 4))
    reference = predictor.predict(torch.from_numpy(image), tta=True)
    assert torch.equal(predictor.predict(WindowedSource(ArrayReader(image), block=32), tta=True), reference)


def test_strip_pass_of_a_source_equals_the_strips_of_a_tensor(monkeypatch):
    monkeypatch.setattr(contexts, "_STRIP_THRESHOLD", 1000)  # force the strip pass on a small image
    image = _scene(300, 170)
    from_tensor = global_view(torch.from_numpy(image), 40)
    from_source = global_view(WindowedSource(ArrayReader(image), block=64), 40)
    assert torch.equal(from_source, from_tensor)
    predictor = Predictor(StandIn(4).eval(), PipelineConfig(64, 48, 3, 4))
    assert torch.equal(predictor.predict(WindowedSource(ArrayReader(image))), predictor.predict(torch.from_numpy(image)))


def test_medium_contexts_of_a_source_equal_those_of_the_tensor():
    image = _scene(150, 131)
    tops, lefts = [0, 40, 86], [0, 67, 30]
    torch.testing.assert_close(context_windows(WindowedSource(ArrayReader(image), block=32), tops, lefts, 64, 3),
                               context_windows(torch.from_numpy(image), tops, lefts, 64, 3), rtol=0, atol=0)


def test_confidence_is_the_top_softmax_of_the_mean_logits():
    image = torch.from_numpy(_scene(150, 170))
    predictor = Predictor(StandIn(1).eval(), PipelineConfig(64, 48, 3, 4))
    logits = predictor.logits(image, tta=False)
    # The number of patches over each pixel, from the same grid (ones merged like logits).
    from pipeline.grid import make_grid

    grid = make_grid(150, 170, 64)
    counts = torch.zeros(150, 170)
    for top, left in grid.boxes():
        counts[top:top + 64, left:left + 64] += 1
    expected = (torch.softmax(logits / counts, dim=0).max(dim=0).values * 255).round().to(torch.uint8)
    band = torch.cat([b for _, b in predictor.mask_bands(image, confidence=True)], dim=1)
    assert (band[1].int() - expected.int()).abs().max() <= 1
    assert torch.equal(band[0], logits.argmax(0).to(torch.uint8))


@pytest.mark.parametrize("tta", [False, pytest.param(True, marks=pytest.mark.slow)])  # 8 views: slow
def test_spilling_the_carried_rows_changes_nothing(monkeypatch, tta):
    image = torch.from_numpy(_scene(230, 270))
    predictor = Predictor(StandIn(4).eval(), PipelineConfig(size_p=64, size_g=48, context=3, sub_batch_size=5))
    reference = predictor.logits(image, tta=tta)
    scores = {kind: torch.cat([b for _, b in predictor.mask_bands(image, tta=tta, **{kind: True})], dim=1)
              for kind in ("confidence", "probabilities")}
    monkeypatch.setattr(Predictor, "spill_width", 100)
    assert torch.equal(predictor.logits(image, tta=tta), reference)
    for kind, expected in scores.items():  # their score channels wait in the spill file too
        assert torch.equal(torch.cat([b for _, b in predictor.mask_bands(image, tta=tta, **{kind: True})], dim=1),
                           expected)
    assert torch.equal(predictor.predict(WindowedSource(ArrayReader(image.numpy()), block=64), tta=tta),
                       reference.argmax(0).to(torch.uint8))


class _SlowCloningReader(ArrayReader):
    """An ArrayReader that can be cloned for reader threads and takes a while per read (a network)."""

    def __init__(self, image, delay=0.0, threads=None):
        super().__init__(image)
        self.delay, self.threads = delay, threads if threads is not None else set()

    def clone(self):
        return _SlowCloningReader(self.image, self.delay, self.threads)

    def read(self, top, left, height, width):
        import threading
        import time

        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return super().read(top, left, height, width)

    def close(self):
        pass


@pytest.mark.parametrize("mode", [1, 4])
def test_reading_ahead_changes_no_bit_and_reads_in_the_reader_threads(mode):
    image = _scene(300, 340, seed=mode)
    cfg = PipelineConfig(size_p=64, size_g=64, sub_batch_size=3)
    predictor = Predictor(StandIn(mode), cfg)
    plain = WindowedSource(ArrayReader(image), block=48, capacity=24)
    reference = predictor.predict(plain, tta=False)
    reader = _SlowCloningReader(image, delay=0.001)
    with WindowedSource(reader, block=48, capacity=24, readers=3) as ahead:
        assert torch.equal(predictor.predict(ahead, tta=False), reference)
        assert ahead.reads == plain.reads  # every block is read as often, some of them ahead
    assert any(name.startswith("fctl-read-ahead") for name in reader.threads)


def test_a_read_error_ahead_is_raised_where_the_block_is_asked_for():
    from utils.errors import InputFileError

    class Broken(_SlowCloningReader):
        def clone(self):
            return Broken(self.image)

        def read(self, top, left, height, width):
            if top >= 128:
                raise InputFileError("image x.tif: rows 128..192 cannot be read", path="x.tif")
            return super().read(top, left, height, width)

    with WindowedSource(Broken(_scene(256, 256)), block=64, capacity=8, readers=2) as source:
        source.prefetch([(0, 0, 256, 256)])
        assert source.window(0, 0, 64, 64).shape == (3, 64, 64)
        with pytest.raises(InputFileError, match="rows 128..192"):
            source.window(128, 0, 64, 64)


def test_strips_are_read_ahead_one_below_the_other_a_tile_at_a_time():
    """Each read of a strip piece lies within one block (one tile of a tiled file: over a network a read
    across two tiles would fetch both again instead of taking the shared one from GDAL's cache)."""
    image = _scene(100, 80)
    windows = []

    class Recording(_SlowCloningReader):
        def clone(self):
            return Recording(self.image, self.delay, self.threads)

        def read(self, top, left, height, width):
            windows.append((top, left, height, width))
            return super().read(top, left, height, width)

    reader = Recording(image)
    with WindowedSource(reader, block=32, readers=2) as source:
        strips = [source.strip(top, min(top + 30, 100), 80) for top in range(0, 100, 30)]
        assert source.strip(5, 20, 80).shape == (3, 15, 80)  # out of sequence: read on the spot
    assert torch.equal(torch.cat(strips, dim=1), torch.from_numpy(image))
    assert any(name.startswith("fctl-read-ahead") for name in reader.threads)
    assert all(t // 32 == (t + h - 1) // 32 and l // 32 == (l + w - 1) // 32 for t, l, h, w in windows)
    assert {(t, h) for t, _, h, _ in windows} >= {(30, 2), (32, 28), (60, 4), (64, 26), (90, 6), (96, 4)}
