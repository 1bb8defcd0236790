"""The declared contracts: backbones implement ``Backbone``, networks satisfy ``SegmentationNetwork``,
and a forward pass checks its ``NetworkInputs`` against what its mode reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.backbones import BACKBONES, build_backbone
from models.fctl import FCtLNet
from models.inputs import NO_INPUTS, NetworkInputs
from models.interfaces import Backbone, SegmentationNetwork
from models.modes import MODES
from tools.stand_in import StandIn
from utils.errors import ConfigError


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "fcn8_vgg16" else n for n in BACKBONES])
def test_every_registered_backbone_implements_the_interface(name: str) -> None:
    backbone = build_backbone(name, 3, head=True)
    assert isinstance(backbone, Backbone) and backbone.name == name and backbone.n_class == 3
    x = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        skips, top = backbone.encode(x)
        assert top.shape[1] == backbone.top_channels
        assert backbone.context(x).shape[1] == backbone.context_channels
        assert backbone(x).shape == (1, 3, 40, 36)


def test_an_unknown_backbone_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as error:
        build_backbone("vgg19", 7)
    assert all(name in str(error.value) for name in BACKBONES)


def test_a_backbone_without_its_channel_counts_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="top_channels"):
        class Incomplete(Backbone):  # noqa: F841 - declaring it is the test
            context_channels = 8
            context_needs_head = False


def test_a_backbone_must_implement_encode_decode_and_context_features() -> None:
    class NoDecoder(Backbone):
        top_channels = context_channels = 8
        context_needs_head = False

        def encode(self, x):
            return [], x

        def context_features(self, skips, top):
            return top

    with pytest.raises(TypeError, match="decode"):
        NoDecoder()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_fctlnet_and_the_stand_in_satisfy_the_network_protocol(mode: int) -> None:
    for net in (FCtLNet(mode, "fpn_resnet18", n_class=3), StandIn(mode)):
        assert isinstance(net, SegmentationNetwork)
        assert net.spec is MODES[mode] and net.mode == mode


def test_a_plain_module_is_not_a_segmentation_network() -> None:
    assert not isinstance(torch.nn.Conv2d(3, 3, 1), SegmentationNetwork)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_forward_without_what_its_mode_reads_names_the_missing_fields(mode: int) -> None:
    net = StandIn(mode).eval()
    reads = MODES[mode].extra_inputs
    assert set(reads) <= {f.name for f in dataclasses.fields(NetworkInputs)}
    x = torch.rand(2, 3, 16, 16)
    if not reads:
        assert net(x, NO_INPUTS).shape == (2, 7, 16, 16)
        return
    with pytest.raises(ValueError) as error:
        net(x, NO_INPUTS)
    assert all(name in str(error.value) for name in reads)


def test_network_inputs_are_frozen_and_map_only_present_tensors() -> None:
    inputs = NetworkInputs(medium=torch.zeros(2, 3, 4, 4))
    with pytest.raises(AttributeError):
        inputs.medium = None  # type: ignore[misc]
    mapped = inputs.map(lambda t: t + 1)
    assert mapped.global_context is None and mapped.large_window is None
    assert torch.equal(mapped.medium, torch.ones(2, 3, 4, 4)) and torch.equal(inputs.medium, torch.zeros(2, 3, 4, 4))


def test_the_predictor_and_the_trainer_refuse_what_is_not_a_network() -> None:
    from engine.training import Trainer, TrainingPlan
    from pipeline.config import PipelineConfig
    from pipeline.predictor import Predictor

    conv = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(TypeError, match="SegmentationNetwork"):
        Predictor(conv, PipelineConfig(64, 64))
    with pytest.raises(TypeError, match="SegmentationNetwork"):
        Trainer(conv, torch.optim.SGD(conv.parameters(), lr=0.1), [], torch.nn.CrossEntropyLoss(), PipelineConfig(64, 64),
                TrainingPlan(epochs=1, lr=0.1), device=torch.device("cpu"))
