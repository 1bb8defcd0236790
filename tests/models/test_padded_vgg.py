"""FCN8's padding skip (models/padded_vgg.py): the same features as the plain VGG stack, in every use."""

from __future__ import annotations

import pytest
import torch

from models.fcn8 import FCN8
from models.padded_vgg import BackgroundPlan, Extent, PaddedVGG

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fcn8() -> FCN8:
    torch.manual_seed(0)
    return FCN8(3, head=False).eval()


@pytest.fixture(scope="module")
def plain_fcn8(fcn8) -> FCN8:
    return _plain_twin(fcn8)


def _plain_twin(model: FCN8) -> FCN8:
    """``model`` built with skip_padding=False: the same weights, dtype and train/eval state."""
    dtype = next(model.parameters()).dtype
    twin = FCN8(model.n_class, head=model.has_head, skip_padding=False).to(dtype).train(model.training)
    twin.load_state_dict(model.state_dict())
    return twin


def _both(plain: FCN8, skipping: FCN8, x: torch.Tensor):
    assert not plain.skip_padding and skipping.skip_padding
    return plain.encode(x), skipping.encode(x)


def test_skip_padding_is_a_setting_of_each_model():
    assert FCN8(3, head=False).skip_padding and "skip_padding" not in vars(FCN8)
    plain = FCN8(3, head=False, skip_padding=False)
    assert not plain.skip_padding and FCN8(3, head=False).skip_padding


def _close(plain, skipped) -> None:
    for a, b in zip([*plain[0], plain[1]], [*skipped[0], skipped[1]]):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 40, 40), (1, 3, 64, 96),
                                   pytest.param((3, 3, 100, 100), marks=pytest.mark.slow), (1, 3, 97, 71)])
def test_same_features_for_any_input_shape(fcn8, plain_fcn8, shape):
    torch.manual_seed(1)
    with torch.no_grad():
        _close(*_both(plain_fcn8, fcn8, torch.rand(shape)))


def test_the_background_is_the_zero_image_and_only_its_rings_are_computed(fcn8):
    # Away from the map's edge the background is the tracked constant; the whole of it is what the
    # plain layers give for an all-zero image.
    x = torch.rand(1, 3, 64, 64)
    features = fcn8.vgg.features
    with torch.no_grad():
        out, constant, extent = PaddedVGG.blank(features[0], x)
        out, constant, extent = PaddedVGG.run(features[1:5], out, constant, extent)
        torch.testing.assert_close(out, features[:5](torch.zeros(1, 3, 64, 64)), rtol=1e-5, atol=1e-6)
    assert extent.share() < 0.1
    inside = torch.ones(out.shape[2:], dtype=torch.bool)
    for top, bottom, left, right in extent.boxes():
        inside[top:bottom, left:right] = False
    assert inside.any()
    torch.testing.assert_close(out[0][:, inside], constant[:, None].expand(-1, int(inside.sum())))


@pytest.mark.slow  # float64 gradients of two full VGG stacks
def test_gradients_match():
    # In float64, so that the float32 rounding of sums over whole maps (gradients in the thousands)
    # does not hide a missing term.
    torch.manual_seed(2)
    encoder = FCN8(3, head=False).double()
    with torch.no_grad():  # non-zero biases: the background then depends on every one of them
        for layer in encoder.vgg.features:
            if isinstance(layer, torch.nn.Conv2d):
                layer.bias.uniform_(0.0, 0.2)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    grads = []
    for model in (_plain_twin(encoder), encoder):
        (p3, p4), p5 = model.encode(x)
        (p3.sum() + p4.sum() + (p5 ** 2).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # full FCN8 forwards in two formats and bf16
def test_channels_last_and_bf16_autocast(fcn8):
    torch.manual_seed(3)
    x = torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model = FCN8(3, head=False).eval().to(memory_format=torch.channels_last)
    model.load_state_dict(fcn8.state_dict())
    plain_model = _plain_twin(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        plain, skipped = _both(plain_model, model, x)
        _close(plain, skipped)
        assert skipped[1].is_contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, skipped = _both(plain_model, model, x)
    for a, b in zip([*plain[0], plain[1]], [*skipped[0], skipped[1]]):
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(b.float(), a.float(), rtol=0.05, atol=0.05)


def test_extent_boxes():
    extent = Extent(10, 12, (3, 6, 4, 8), 2)
    boxes = extent.boxes()
    covered = torch.zeros(10, 12, dtype=torch.bool)
    for top, bottom, left, right in boxes:
        covered[top:bottom, left:right] = True
    assert covered[3:6, 4:8].all() and covered[:2].all() and covered[-2:].all()
    assert covered[:, :2].all() and covered[:, -2:].all() and not covered[2, 2]


# --- BackgroundPlan: the pass without autograd ------------------------------------------------------

def _plain_and_planned(layers: torch.nn.Sequential, x: torch.Tensor, stops: tuple[int, ...]):
    plan = BackgroundPlan(layers, x, stops)
    core, planned, start = plan.start(x), [], 1
    for stop in stops:
        core = plan.run(core, start, stop)
        planned.append(plan.full(core, stop))
        start = stop
    plain = [layers[:stop](x) for stop in stops]
    return plain, planned, plan


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (1, 3, 9, 14), (3, 3, 33, 20)])
def test_plan_handles_every_layer_kind(shape):
    # Unaligned pools (kernel != stride, or a core at an odd offset) read background pieces; a layer the
    # plan does not know (Tanh) runs on the whole map, and everything after it too.
    torch.manual_seed(4)
    conv = lambda cin, cout, k=3: torch.nn.Conv2d(cin, cout, k, padding=k // 2)  # noqa: E731
    layers = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=12), torch.nn.MaxPool2d(2, 2, ceil_mode=True), torch.nn.ReLU(),
        conv(4, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, ceil_mode=True), conv(5, 5, 5), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2, 2), conv(5, 6), torch.nn.Tanh(), conv(6, 6), torch.nn.MaxPool2d(2, 2, ceil_mode=True))
    for layer in layers:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.uniform_(layer.bias, -1, 1)
    with torch.no_grad():
        plain, planned, plan = _plain_and_planned(layers, torch.rand(shape), (5, 9, len(layers)))
    assert {step.kind for step in plan.steps} == {"first", "conv", "relu", "pool", "map"}
    for a, b in zip(plain, planned):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # FLOP counting of two full FCN8 forwards
def test_plan_computes_less_than_the_plain_stack(fcn8, plain_fcn8):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(2, 3, 64, 64)
    counts = []
    with torch.no_grad():
        fcn8.encode(x)  # the plan is built here, with one plain pass on a zero image
        for model in (plain_fcn8, fcn8):
            with FlopCounterMode(display=False) as counter:
                model.encode(x)
            counts.append(counter.get_total_flops())
    assert counts[1] < 0.5 * counts[0]


@pytest.mark.slow  # several full FCN8 forwards
def test_plan_is_reused_and_rebuilt_when_the_weights_change():
    torch.manual_seed(5)
    model = FCN8(3, head=False).eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        model.encode(x)
        first = model.padding_plan(x)
        model.encode(x)
        assert model.padding_plan(x) is first and len(model._plans) == 1
        model.encode(torch.rand(1, 3, 30, 30))
        assert len(model._plans) == 2
        # An optimizer step or a loaded checkpoint changes the weights in place: the background changes.
        model.vgg.features[2].bias.add_(0.5)
        assert model.padding_plan(x) is not first
        assert len(model._plans) == 1  # the plans of the old weights are gone
        plain, skipped = _both(_plain_twin(model), model, x)
    _close(plain, skipped)
    for size in range(40, 40 + FCN8.kept_plans + 2):
        with torch.no_grad():
            model.encode(torch.rand(1, 3, size, size))
    assert len(model._plans) == FCN8.kept_plans


def test_a_plan_without_autograd_refuses_a_pass_with_it(fcn8):
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        plan = fcn8.padding_plan(x)
    with pytest.raises(RuntimeError, match="without autograd"):
        plan.start(x)
    assert fcn8.padding_plan(x) is not plan and fcn8.padding_plan(x).differentiable
