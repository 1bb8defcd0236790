"""FCtLNet: every mode's forward shapes, context plumbing, frozen encoders, gradients, parameter counts."""

import math

import pytest
import torch

from models.fctl import FCtLNet
from models.inputs import NetworkInputs
from tools.released_layout import released_shapes
from utils.errors import ConfigError

N_CLASS = 7
VGG_CLASSIFIER = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
VGG_FEATURES = 14_714_688
# Measured with this code (7 classes): trainable part (what a checkpoint holds) per mode.
FCN8_TRAINABLE = {0: 134_308_725, 1: 134_308_725, 2: 135_096_182, 3: 137_983_863, 4: 140_607_864}
RELEASED_KIND = {0: "global", 2: "medium", 4: "all"}


def numel(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors.values())


def released_numel(kind: str) -> int:
    """Distinct parameters stored in a released file (aliases counted once), from the key layout."""
    return sum(math.prod(shape) for shape in released_shapes(kind).values())


def contexts(model: FCtLNet, batch: int, height: int, width: int) -> NetworkInputs:
    inputs = {}
    if "medium" in model.spec.extra_inputs:
        inputs["medium"] = torch.rand(batch, 3, height, width)
    if "global_context" in model.spec.extra_inputs:
        inputs["global_context"] = model.encode_global(torch.rand(1, 3, 48, 48))
    return NetworkInputs(**inputs)


@pytest.fixture(scope="module")
def mode4() -> FCtLNet:
    torch.manual_seed(0)
    return FCtLNet(4, "fcn8_vgg16", N_CLASS)


def test_mode4_structure_and_counts(mode4: FCtLNet) -> None:
    assert (mode4.mode, mode4.backbone_name, mode4.spec.extra_inputs) == (4, "fcn8_vgg16", ("medium", "global_context"))
    names = [n for n, _ in mode4.named_children()]
    assert names == ["backbone", "local", "medium", "large", "fusion", "context_encoder", "global_encoder"]
    trainable = mode4.trainable_state_dict()
    assert not any(k.startswith(("context_encoder.", "global_encoder.")) for k in trainable)
    assert numel(trainable) == FCN8_TRAINABLE[4]
    for encoder in (mode4.context_encoder, mode4.global_encoder):
        assert [n for n, _ in encoder.named_children()] == ["vgg"]
        assert sum(p.numel() for p in encoder.parameters()) == VGG_FEATURES
        assert not any(p.requires_grad for p in encoder.parameters())
    total = sum(p.numel() for p in mode4.parameters())
    assert total == FCN8_TRAINABLE[4] + 2 * VGG_FEATURES
    # The released file is our trainable part plus VGG's classifier, nothing else.
    assert released_numel("all") == numel(trainable) + VGG_CLASSIFIER
    print(f"mode 4: trainable {numel(trainable):,}, total {total:,}, released all {released_numel('all'):,}")


def test_train_keeps_frozen_encoders_in_eval(mode4: FCtLNet) -> None:
    mode4.train()
    assert mode4.training and mode4.backbone.training and mode4.fusion.training
    for encoder in (mode4.context_encoder, mode4.global_encoder):
        assert not encoder.training and not any(m.training for m in encoder.modules())
    mode4.eval()
    assert not mode4.backbone.training


@pytest.mark.slow  # a full-size FCN8 mode-4 forward and backward
def test_mode4_forward_backward(mode4: FCtLNet) -> None:
    torch.manual_seed(1)
    mode4.train()
    mode4.zero_grad(set_to_none=True)
    with torch.no_grad():
        for block in (mode4.local, mode4.medium, mode4.large):
            block.gamma.fill_(0.5)
    global_context = mode4.encode_global(torch.rand(1, 3, 40, 40))
    assert global_context.shape == (1, 512, 8, 8) and not global_context.requires_grad
    out = mode4(torch.rand(1, 3, 24, 20), NetworkInputs(torch.rand(1, 3, 24, 20), global_context))
    assert out.shape == (1, N_CLASS, 24, 20)
    out.float().pow(2).mean().backward()
    for name, param in mode4.named_parameters():
        if name.startswith(("context_encoder.", "global_encoder.", "backbone.up_")):
            assert param.grad is None, name
        else:
            assert param.grad is not None, name
    for block in (mode4.local, mode4.medium, mode4.large):
        assert block.conv_query.weight.grad.abs().sum() > 0
    assert mode4.fusion.trans.weight.grad.abs().sum() > 0
    mode4.zero_grad(set_to_none=True)
    with torch.no_grad():
        for block in (mode4.local, mode4.medium, mode4.large):
            block.gamma.zero_()
    mode4.eval()


@pytest.mark.slow  # full-size FCN8-VGG16 forwards on several inputs
@torch.no_grad()
def test_mode4_shapes_and_contexts(mode4: FCtLNet) -> None:
    torch.manual_seed(2)
    mode4.eval()
    global_context = mode4.encode_global(torch.rand(1, 3, 32, 32))
    for height, width in ((32, 32), (40, 24)):
        x, medium = torch.rand(2, 3, height, width), torch.rand(2, 3, height, width)
        assert mode4(x, NetworkInputs(medium, global_context)).shape == (2, N_CLASS, height, width)
    mode4.medium.gamma.fill_(1.0)
    mode4.large.gamma.fill_(1.0)
    with_medium = mode4(x, NetworkInputs(medium, global_context))
    assert not torch.allclose(with_medium, mode4(x, NetworkInputs(torch.rand(2, 3, height, width), global_context))), \
        "the medium context must matter"
    torch.testing.assert_close(mode4(x, NetworkInputs(medium, global_context.expand(2, -1, -1, -1))), with_medium)
    mode4.medium.gamma.zero_()
    mode4.large.gamma.zero_()
    with pytest.raises(ValueError, match="medium"):
        mode4(torch.rand(1, 3, 8, 8), NetworkInputs(None, global_context))


@pytest.mark.slow  # full-size FCN8-VGG16 forwards on several inputs
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_fcn8_modes(mode: int) -> None:
    torch.manual_seed(3)
    model = FCtLNet(mode, "fcn8_vgg16", N_CLASS)
    assert model.spec.extra_inputs == {0: (), 1: (), 2: ("medium",), 3: ("global_context",)}[mode]
    children = {n for n, _ in model.named_children()}
    assert children == {0: {"backbone"}, 1: {"backbone"}, 2: {"backbone", "big"},
                        3: {"backbone", "local", "large", "fusion", "global_encoder"}}[mode]
    assert numel(model.trainable_state_dict()) == FCN8_TRAINABLE[mode]
    if mode in RELEASED_KIND:
        assert released_numel(RELEASED_KIND[mode]) == FCN8_TRAINABLE[mode] + VGG_CLASSIFIER
    if mode == 3:
        assert model.fusion.branches == 2 and model.fusion.trans.weight.shape == (1024, 1024, 1, 1)
        assert not model.global_encoder.training
    model.eval()
    with torch.no_grad():
        for height, width in ((32, 32), (36, 20)):
            out = model(torch.rand(2, 3, height, width), contexts(model, 2, height, width))
            assert out.shape == (2, N_CLASS, height, width)
    if mode == 2:
        with torch.no_grad():
            model.big.gamma.fill_(1.0)
            x = torch.rand(1, 3, 16, 16)
            one, other = NetworkInputs(torch.rand(1, 3, 16, 16)), NetworkInputs(torch.rand(1, 3, 16, 16))
            assert not torch.allclose(model(x, one), model(x, other))
    if mode == 3:
        model.train()
        out = model(torch.rand(1, 3, 16, 12), contexts(model, 1, 16, 12))
        out.pow(2).mean().backward()
        for name, param in model.named_parameters():
            frozen = name.startswith(("global_encoder.", "backbone.up_"))
            assert (param.grad is None) == frozen, name


@pytest.mark.parametrize("mode", [0, 1, 2, 3, 4])
def test_fpn_resnet18_modes(mode: int) -> None:
    torch.manual_seed(4)
    model = FCtLNet(mode, "fpn_resnet18", N_CLASS)
    if mode == 4:
        # The patch's top (256 channels) queries the context: pooled head features (128 channels).
        assert model.medium.conv_query.weight.shape == (256, 256, 1, 1)
        assert model.medium.conv_key.weight.shape == (256, 128, 1, 1)
        assert model.medium.conv_value.weight.shape == (256, 128, 1, 1)
        assert [n for n, _ in model.context_encoder.named_children()] == ["body", "top", "fpn", "head"]
    model.train()
    for height, width in ((64, 64), (64, 48)):
        out = model(torch.rand(2, 3, height, width), contexts(model, 2, height, width))
        assert out.shape == (2, N_CLASS, height, width)
    out.mean().backward()
    for encoder in model.frozen_encoders():
        assert not encoder.training
        assert all(p.grad is None for p in encoder.parameters())
    assert model.backbone.head[0].weight.grad is not None


def test_mode2_encodes_patches_and_contexts_in_one_pass() -> None:
    """Mode 2 sends patches and contexts through the shared backbone as one batch; with per-sample
    normalisation that equals encoding them separately."""
    torch.manual_seed(5)
    model = FCtLNet(2, "fpn_resnet18", N_CLASS).train()
    x, medium = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    calls = []
    hook = model.backbone.body.conv1.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            out = model(x, NetworkInputs(medium=medium))
    finally:
        hook.remove()
    assert calls == [4]
    with torch.no_grad():
        skips, top = model.backbone.encode(x)
        top = top + model.big(top, model.backbone.context(medium))
        expected = model.backbone.decode(skips, top, (64, 64))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_fpn_context_is_the_head_features_pooled_to_the_top_grid() -> None:
    torch.manual_seed(6)
    model = FCtLNet(4, "fpn_resnet18", N_CLASS).eval()
    image = torch.rand(1, 3, 70, 70)
    with torch.no_grad():
        skips, top = model.global_encoder.encode(image)
        features = model.global_encoder.head_features(skips, top)
        context = model.encode_global(image)
    assert top.shape[-2:] == (3, 3) and features.shape[-2:] == (18, 18)
    torch.testing.assert_close(context, torch.nn.functional.adaptive_avg_pool2d(features, (3, 3)))
    # the medium branch reads the frozen context encoder the same way
    x, medium = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, NetworkInputs(medium, context))
        skips, top = model.backbone.encode(x)
        branches = [model.local(top, top), model.medium(top, model.context_encoder.context(medium)),
                    model.large(top, context)]
        expected = model.backbone.decode(skips, top + model.fusion(branches), (64, 64))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("gamma_init", [0.0, 1.0])
def test_gamma_init_sets_every_gate(gamma_init: float) -> None:
    model = FCtLNet(4, "fpn_resnet18", N_CLASS, gamma_init=gamma_init)
    gates = [m.gamma.item() for m in (model.local, model.medium, model.large)]
    assert gates == [gamma_init] * 3


def test_bad_mode_and_missing_inputs() -> None:
    with pytest.raises(ConfigError, match="mode"):
        FCtLNet(6, "fpn_resnet18")
    with pytest.raises(ConfigError, match="backbone"):
        FCtLNet(1, "vgg19")
    model = FCtLNet(3, "fpn_resnet18", N_CLASS)
    with pytest.raises(ValueError, match="global_context"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(RuntimeError):
        FCtLNet(1, "fpn_resnet18", N_CLASS).encode_global(torch.rand(1, 3, 64, 64))
