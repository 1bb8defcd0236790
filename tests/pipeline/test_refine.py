"""The refinement network and its window-by-window application over the streamed merge."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.refinement import RefinementNet, RefinementRecord
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor
from pipeline.refine import ContextProbabilities, Refinement
from pipeline.sources import TensorSource, WindowedSource
from tests.pipeline.array_reader import ArrayReader
from tools.stand_in import StandIn
from utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = PipelineConfig(size_p=64, size_g=64, sub_batch_size=4)


def record(context: str = "global", mode: int = 4, n_class: int = 7) -> RefinementRecord:
    return RefinementRecord(mode, "stand_in", n_class, "centred", None, context)


def trained_like(context: str = "global", seed: int = 0, **kwargs) -> RefinementNet:
    """A refinement whose head is not zero, so that it changes the prediction."""
    torch.manual_seed(seed)
    net = RefinementNet(record(context), **kwargs).eval()
    for p in net.head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return net


def image(height: int = 150, width: int = 170, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_a_fresh_refinement_returns_the_logits_it_reads():
    net = RefinementNet(record())
    logits = torch.randn(2, 7, 40, 30)
    out = net(torch.rand(2, 3, 40, 30), logits, torch.rand(2, 7, 40, 30))
    assert torch.equal(out, logits)


def test_the_output_depends_only_on_inputs_within_the_halo():
    net = trained_like(dilations=(1, 2))
    assert net.halo == 7
    size, centre = 41, 20
    x, logits, ctx = torch.rand(1, 3, size, size), torch.randn(1, 7, size, size), torch.rand(1, 7, size, size)
    before = net(x, logits, ctx)[0, :, centre, centre]
    far = x.clone()
    far[0, :, centre + net.halo + 1, :] += 1  # one row beyond the halo
    assert torch.equal(net(far, logits, ctx)[0, :, centre, centre], before)
    near = x.clone()
    near[0, :, centre + net.halo, :] += 1  # the last row inside it
    assert not torch.equal(net(near, logits, ctx)[0, :, centre, centre], before)


def test_a_context_is_given_exactly_when_the_network_reads_one():
    with pytest.raises(ValueError, match="reads a global context"):
        RefinementNet(record("global"))(torch.rand(1, 3, 8, 8), torch.randn(1, 7, 8, 8))
    with pytest.raises(ValueError, match="does not read"):
        RefinementNet(record("none"))(torch.rand(1, 3, 8, 8), torch.randn(1, 7, 8, 8), torch.rand(1, 7, 8, 8))


def test_context_windows_equal_the_full_size_upsampling():
    small = torch.randn(7, 13, 11)
    context = ContextProbabilities(small, 150, 170)
    full = F.interpolate(torch.softmax(small, 0)[None], size=(150, 170), mode="bilinear", align_corners=False)[0]
    for top, left, h, w in [(0, 0, 150, 170), (37, 51, 40, 60), (149, 169, 1, 1)]:
        torch.testing.assert_close(context.window(top, left, h, w), full[:, top:top + h, left:left + w])


def _bands(refinement, img, mean, cuts, context, output="logits"):
    bands = ((a, mean[:, a:b]) for a, b in zip([0, *cuts], [*cuts, mean.shape[1]]))
    return torch.cat([band for _, band in refinement.bands(TensorSource(img), bands, *mean.shape[1:], context, CFG,
                                                           output)], dim=-2)


def test_bands_of_any_height_give_the_same_bits_and_match_one_window():
    img, mean = image(), torch.randn(7, 150, 170)
    context = ContextProbabilities(torch.randn(7, 8, 8), 150, 170)
    refinement = Refinement(trained_like(), StandIn(0).eval(), tile=48)
    one = _bands(refinement, img, mean, [], context)
    for cuts in ([1], [50, 51, 120], list(range(7, 150, 7))):
        assert torch.equal(_bands(refinement, img, mean, cuts, context), one)
    whole = Refinement(refinement.net, StandIn(0).eval(), tile=1000)
    torch.testing.assert_close(_bands(whole, img, mean, [], context), one, rtol=0, atol=1e-5)
    masks = _bands(refinement, img, mean, [60], context, "mask")
    assert masks.dtype == torch.uint8 and torch.equal(masks, one.argmax(0).to(torch.uint8))


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_predictor_refines_streamed_sources_as_in_memory_images(channels_last):
    img = image(200, 190)
    net = trained_like()
    if channels_last:  # how the command line runs it for inference
        net = net.to(memory_format=torch.channels_last)
    refined = Predictor(StandIn(4).eval(), CFG, Refinement(net, StandIn(0).eval(), tile=64))
    in_memory = refined.logits(img, tta=True)
    source = WindowedSource(ArrayReader(img.numpy()), block=32, capacity=8)
    assert torch.equal(torch.cat([b for _, b in refined.logit_bands(source, tta=True)], dim=1), in_memory)
    confidence = torch.cat([b for _, b in refined.mask_bands(img, tta=True, confidence=True)], dim=1)
    assert torch.equal(confidence[0], in_memory.argmax(0).to(torch.uint8))
    top = torch.softmax(in_memory, 0).max(0).values
    assert (confidence[1].float() - top * 255).abs().max() <= 0.51


@pytest.mark.parametrize("merge", ["sum", "hann"])
def test_an_untrained_refinement_keeps_the_base_mask(merge):
    cfg = PipelineConfig(size_p=64, size_g=64, sub_batch_size=4, merge=merge)
    img, base = image(), StandIn(4).eval()
    fresh = Refinement(RefinementNet(record("none")).eval())
    plain, refined = Predictor(base, cfg), Predictor(base, cfg, fresh)
    assert torch.equal(refined.predict(img), plain.predict(img))
    torch.testing.assert_close(refined.logits(img), torch.cat([b for _, b in plain.mean_logit_bands(img)], 1))


def test_refinement_is_refused_where_it_cannot_work():
    with pytest.raises(ConfigError, match="whole image at once"):
        Predictor(StandIn(0), CFG, Refinement(RefinementNet(record("none"))))
    with pytest.raises(ConfigError, match="refinement is for 3 classes"):
        Predictor(StandIn(4), CFG, Refinement(RefinementNet(record("none", n_class=3))))
    with pytest.raises(ConfigError, match="reads the global context"):
        Refinement(RefinementNet(record("global")))
    with pytest.raises(ConfigError, match="without a global context"):
        Refinement(RefinementNet(record("none")), StandIn(0))
    with pytest.raises(ConfigError, match="mode-0"):
        Refinement(RefinementNet(record("global")), StandIn(1))


def test_refined_probabilities_agree_with_the_refined_mask_and_confidence():
    refined = Predictor(StandIn(4).eval(), CFG, Refinement(trained_like(), StandIn(0).eval(), tile=64))
    img = image()
    probabilities = torch.cat([b for _, b in refined.mask_bands(img, probabilities=True)], dim=1)
    mask = torch.cat([b for _, b in refined.mask_bands(img)], dim=0)
    confidence = torch.cat([b for _, b in refined.mask_bands(img, confidence=True)], dim=1)
    assert probabilities.shape == (8, 150, 170)
    assert torch.equal(probabilities[0], mask) and torch.equal(probabilities[1:].max(dim=0).values, confidence[1])
