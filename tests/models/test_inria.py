"""The Inria release of FCtL: the plain (uncentred) correlation, mode 5's three-branch fusion in the
release's order (medium, large, self), its released checkpoints (all / B10 / B15) landing in the right
parameters, the loading errors, and mode 5 on an FPN backbone."""

import logging
import math
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_weights, read_checkpoint
from models.correlation import FCtLCorrelation
from models.fctl import FCtLNet
from models.inputs import NetworkInputs
from models.setup import create_model
from tools.released_layout import CLASSIFIER, LAYOUT, make_released_checkpoint
from utils.errors import CheckpointError

N_CLASS = 2
SIZE = 64
_POOL_OFFSET = {"pool3": 0, "pool4": 17, "pool5": 24, "big_pool3": 0, "big_pool4": 17, "big_pool5": 24}
_BRANCH = {"": "big", "_1": "large", "_2": "local"}  # the release's big_attention suffixes -> our blocks
_FUSION_PARTS = ("in_1", "in_2", "in_3", "trans", "out_1", "out_2", "out_3")

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py: 5-30x faster on busy cores
# Tests that read the three fake released files (about 1 GB each, ~15 s to write) are in the slow tier.
RELEASED = pytest.mark.slow


def randomise(module: torch.nn.Module, seed: int, scale: float = 1.0) -> None:
    """Every parameter ~ N(0, scale^2 / fan_in) (fan_in 1 for vectors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            fan_in = math.prod(param.shape[1:]) if param.dim() > 1 else 1
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale / math.sqrt(fan_in))


def raw(path: Path) -> dict[str, torch.Tensor]:
    """The file as torch stores it, read independently of models.checkpoint."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


# --- 1. the plain correlation ------------------------------------------------------------------------


@torch.no_grad()
def plain_reference(block: FCtLCorrelation, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The spec's Inria correlation with Python loops over positions and channels, in float64:
    q = conv_query(x), k = conv_key(y), v = conv_value(y) (no bias); a[n, m] = softmax over key
    positions m of sum_c q[c, n] k[c, m] (no centring, no scaling); out[c, n] = gamma sum_m a[n, m] v[c, m]."""
    wq, bq = block.conv_query.weight[:, :, 0, 0].double(), block.conv_query.bias.double()
    wk, bk = block.conv_key.weight[:, :, 0, 0].double(), block.conv_key.bias.double()
    wv = block.conv_value.weight[:, :, 0, 0].double()
    gamma = float(block.gamma)
    batch, _, height, width = x.shape
    out_channels = wq.shape[0]
    out = torch.zeros(batch, out_channels, height, width, dtype=torch.float64)

    def project(weight: torch.Tensor, bias: torch.Tensor | None, feat: torch.Tensor) -> list[list[float]]:
        rows = []
        for i in range(feat.shape[1]):
            for j in range(feat.shape[2]):
                rows.append([(float(bias[o]) if bias is not None else 0.0)
                             + sum(float(weight[o, c]) * float(feat[c, i, j]) for c in range(feat.shape[0]))
                             for o in range(weight.shape[0])])
        return rows

    for b in range(batch):
        context = y[b if y.shape[0] > 1 else 0].double()
        queries = project(wq, bq, x[b].double())
        keys = project(wk, bk, context)
        values = project(wv, None, context)
        for n, query in enumerate(queries):
            scores = [sum(query[c] * key[c] for c in range(out_channels)) for key in keys]
            peak = max(scores)
            exps = [math.exp(s - peak) for s in scores]
            total = sum(exps)
            for c in range(out_channels):
                out[b, c, n // width, n % width] = gamma * sum(e / total * v[c] for e, v in zip(exps, values))
    return out


@pytest.mark.parametrize(("context_channels", "y_batch"), [(4, 2), (3, 1)])
def test_plain_correlation_matches_loop_reference(context_channels: int, y_batch: int) -> None:
    torch.manual_seed(0)
    block = FCtLCorrelation(4, context_channels, gamma=0.0, centred=False).double()
    randomise(block, seed=1, scale=1.5)
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    y = torch.randn(y_batch, context_channels, 2, 2, dtype=torch.float64)
    got = block(x, y)
    assert got.shape == (2, 4, 3, 3)
    expected = plain_reference(block, x, y)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # The same weights with centring (the DeepGlobe block) give something else: the reference tells them apart.
    centred = FCtLCorrelation(4, context_channels, centred=True).double()
    centred.load_state_dict(block.state_dict())
    assert not torch.allclose(centred(x, y), expected, rtol=1e-3, atol=1e-3)
    # gamma scales the result linearly
    with torch.no_grad():
        block.gamma.fill_(-1.4)
    torch.testing.assert_close(block(x, y), -2.0 * expected, rtol=1e-9, atol=1e-12)


def test_plain_correlation_is_not_shift_invariant_in_the_query() -> None:
    """Centring removes a constant added to every query position; the plain block must not."""
    torch.manual_seed(0)
    plain = FCtLCorrelation(4, centred=False).double()
    randomise(plain, seed=2, scale=1.5)
    with torch.no_grad():
        plain.gamma.fill_(1.0)
    centred = FCtLCorrelation(4, centred=True).double()
    centred.load_state_dict(plain.state_dict())
    x, y = torch.randn(1, 4, 3, 3, dtype=torch.float64), torch.randn(1, 4, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        shifted_bias = plain.conv_query.bias + torch.randn(4, dtype=torch.float64)
    for block in (plain, centred):
        before = block(x, y)
        original = block.conv_query.bias.detach().clone()
        with torch.no_grad():
            block.conv_query.bias.copy_(shifted_bias)
        after = block(x, y)
        with torch.no_grad():
            block.conv_query.bias.copy_(original)
        if block is centred:
            torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-12)
        else:
            assert not torch.allclose(after, before, rtol=1e-3, atol=1e-3)


def test_model_builds_plain_blocks_for_every_branch(mode5_models: dict[str, FCtLNet]) -> None:
    for model in mode5_models.values():
        assert model.correlation == "plain"
        assert [model.big.centred, model.large.centred, model.local.centred] == [False, False, False]
        assert model.spec.fusion_order == ("big", "large", "local")
    assert all(getattr(FCtLNet(5, "fpn_resnet18", N_CLASS), name).centred for name in ("big", "large", "local"))
    with pytest.raises(ValueError, match="correlation"):
        FCtLNet(5, "fpn_resnet18", N_CLASS, correlation="uncentred")


# --- 2. mode 5's forward against the spec's formulas -------------------------------------------------


def conv1x1(conv: torch.nn.Conv2d, feat: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as an explicit per-position matrix product, in float64."""
    out = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0].double(), feat.double())
    return out if conv.bias is None else out + conv.bias.double().view(1, -1, 1, 1)


def attention_reference(block: FCtLCorrelation, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """gamma * (softmax_m(q^T k) applied to v), no centring, float64."""
    batch, channels, height, width = x.shape
    query = conv1x1(block.conv_query, x).flatten(2)
    key = conv1x1(block.conv_key, y).flatten(2)
    value = conv1x1(block.conv_value, y).flatten(2)
    scores = torch.einsum("bcn,bcm->bnm", query, key)
    weights = torch.exp(scores - scores.amax(dim=2, keepdim=True))
    weights = weights / weights.sum(dim=2, keepdim=True)
    out = torch.einsum("bnm,bcm->bcn", weights, value).reshape(batch, channels, height, width)
    return float(block.gamma) * out


def fusion_reference(model: FCtLNet, branches: list[torch.Tensor]) -> torch.Tensor:
    """h_i = in_i(c_i); t = trans(cat h); parts; w_i = sigmoid(out_i(part_i)); a = softmax_i(w) per element;
    sum_i a_i c_i (float64). ``branches`` are c_1, c_2, c_3 in the order given."""
    fusion = model.fusion
    channels = branches[0].shape[1]
    hidden = torch.cat([conv1x1(getattr(fusion, f"in_{i + 1}"), c) for i, c in enumerate(branches)], dim=1)
    t = conv1x1(fusion.trans, hidden)
    gates = [torch.sigmoid(conv1x1(getattr(fusion, f"out_{i + 1}"), t[:, i * channels:(i + 1) * channels]))
             for i in range(3)]
    exps = [torch.exp(w) for w in gates]
    total = exps[0] + exps[1] + exps[2]
    return sum(e / total * c.double() for e, c in zip(exps, branches))


def context_of(encoder: torch.nn.Module, image: torch.Tensor, backbone: str) -> torch.Tensor:
    """What a frozen encoder gives the blocks: FCN8's pool5 (the whole VGG stack), an FPN's context."""
    if backbone == "fcn8_vgg16":
        return encoder.vgg.features(image)
    return encoder.context(image)


@pytest.fixture(scope="module")
def mode5_models(one_thread: None) -> dict[str, FCtLNet]:
    """Mode-5 models (plain correlation, 2 classes) with random, non-zero blocks, gates and fusion."""
    models = {}
    # Query/key scales that make the attention neither uniform nor one-hot: a random VGG's pool5 is
    # small (mean |value| about 0.015 at these inputs), the FPN's top is not (about 0.4).
    for seed, (backbone, scale) in enumerate((("fcn8_vgg16", 5.0), ("fpn_resnet18", 0.3))):
        torch.manual_seed(10 + seed)
        model = FCtLNet(5, backbone, N_CLASS, correlation="plain").eval()
        for offset, name in enumerate(("big", "large", "local")):
            block = getattr(model, name)
            randomise(block, seed=20 + 3 * seed + offset, scale=scale)
            with torch.no_grad():
                block.conv_value.weight.div_(scale)
        randomise(model.fusion, seed=30 + seed, scale=2.0)
        with torch.no_grad():
            model.big.gamma.fill_(0.8)
            model.large.gamma.fill_(-0.6)
            model.local.gamma.fill_(1.1)
        models[backbone] = model
    return models


@pytest.mark.parametrize(("backbone", "batch"), [pytest.param("fcn8_vgg16", 1, marks=pytest.mark.slow), ("fpn_resnet18", 2)])
@torch.no_grad()
def test_mode5_forward_matches_the_spec(mode5_models: dict[str, FCtLNet], backbone: str, batch: int) -> None:
    model = mode5_models[backbone]
    generator = torch.Generator().manual_seed(3)
    x, medium, large = (torch.rand(batch, 3, SIZE, SIZE, generator=generator) for _ in range(3))
    decode = type(model.backbone).decode
    seen = {}

    def spy(skips: list[torch.Tensor], top: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        seen["top"] = top
        return decode(model.backbone, skips, top, size)

    model.backbone.decode = spy  # records the fused top the head decodes
    try:
        got = model(x, NetworkInputs(medium=medium, large_window=large))
    finally:
        del model.backbone.decode
    assert got.shape == (batch, N_CLASS, SIZE, SIZE)

    skips, top = model.backbone.encode(x)
    p10 = context_of(model.context_encoder, medium, backbone)
    p15 = context_of(model.context2_encoder, large, backbone)
    assert p10.shape[-2:] == top.shape[-2:] == p15.shape[-2:]
    c_m = attention_reference(model.big, top, p10)
    c_l = attention_reference(model.large, top, p15)
    c_s = attention_reference(model.local, top, top)
    for c in (c_m, c_l, c_s):  # every branch contributes something
        assert c.abs().mean() > 1e-2 * top.abs().mean()
    expected = top.double() + fusion_reference(model, [c_m, c_l, c_s])
    # float32 against a float64 reference: sums over 512 channels differ in their last bits, and by how
    # much depends on the CPU's vector width (1.6e-5 of 0.43 on one machine); a wrong fusion is off by O(1).
    tolerance = {"rtol": 1e-4, "atol": 1e-4 * float(expected.abs().max())}
    torch.testing.assert_close(seen["top"].double(), expected, **tolerance)
    logits = model.backbone.decode(skips, expected.float(), (SIZE, SIZE))
    torch.testing.assert_close(got, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))
    # The DeepGlobe order (self, medium, large) and the other permutations give another top: the
    # comparison above would catch a branch-order mistake. So would a missing residual or branch.
    wrong = {"self, medium, large (DeepGlobe)": [c_s, c_m, c_l], "large, medium, self": [c_l, c_m, c_s],
             "medium, self, large": [c_m, c_s, c_l], "self, large, medium": [c_s, c_l, c_m],
             "large, self, medium": [c_l, c_s, c_m]}
    for what, order in wrong.items():
        other = top.double() + fusion_reference(model, order)
        assert not torch.allclose(seen["top"].double(), other, **tolerance), what
    assert not torch.allclose(seen["top"].double(), fusion_reference(model, [c_m, c_l, c_s]), **tolerance)
    assert not torch.allclose(seen["top"].double(), top.double(), **tolerance)


# --- 3. the released Inria files land in the right parameters ----------------------------------------


@pytest.fixture(scope="module")
def inria_files(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Path]:
    """Fake released Inria files (about 1 GB each): {"inria_all" | "B10" | "B15": path}."""
    folder = tmp_path_factory.mktemp("inria_released")
    paths = {"inria_all": folder / "all.epoch.pth", "B10": folder / "B10.epoch.pth", "B15": folder / "B15.epoch.pth"}
    for seed, (kind, path) in enumerate(paths.items(), start=41):
        make_released_checkpoint(kind, path, seed=seed)
    yield paths
    for path in paths.values():
        path.unlink(missing_ok=True)


def model_name(key: str) -> str | None:
    """A released Inria key -> the FCtLNet parameter it must end up in, written out from the spec
    (None for VGG's unused classifier)."""
    name = key.removeprefix("module.")
    if key.startswith(CLASSIFIER):
        return None
    first, rest = name.split(".", 1)
    if first in _POOL_OFFSET:
        index, param = rest.split(".", 1)
        return f"backbone.vgg.features.{_POOL_OFFSET[first] + int(index)}.{param}"
    if first == "big_attention":
        part, _, param = rest.partition(".")
        if part in _FUSION_PARTS:
            return f"fusion.{rest}"
        for stem in ("gamma", "conv_query", "conv_key", "conv_value"):
            if part.startswith(stem):
                suffix = part[len(stem):]
                return f"{_BRANCH[suffix]}.{stem}" + (f".{param}" if param else "")
        raise AssertionError(f"unknown block entry {key}")
    return "backbone." + name


def test_model_name_follows_the_layout() -> None:
    """The spec mapping above agrees with the layout's aliases: a key and its canonical key name one slot."""
    for kind in ("inria_all", "B10", "B15"):
        for key, _, canonical in LAYOUT[kind]:
            if canonical is not None:
                assert model_name(key) == model_name(canonical), key


def tensors_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


@pytest.fixture(scope="module")
def inria_mode5(inria_files: dict[str, Path]) -> FCtLNet:
    return create_model(5, "fcn8_vgg16", pre_path=inria_files["inria_all"], c_path=inria_files["B10"],
                        c2_path=inria_files["B15"], n_class=N_CLASS, correlation="plain", training=False)


@RELEASED
def test_read_checkpoint_tells_the_inria_release(inria_files: dict[str, Path]) -> None:
    for kind, mode in (("inria_all", 5), ("B10", 2), ("B15", 2)):
        weights, meta = read_checkpoint(inria_files[kind])
        assert (meta["release"], meta["release_mode"]) == ("inria", mode), kind
        assert not any(name.startswith("big_attention") for name in weights)
        assert len(weights) == 71 and len(meta["ignored"]) == 6
        assert len(meta["aliases"]) == (52 if mode == 2 else 26)


@RELEASED
def test_all_b10_b15_into_mode5(inria_mode5: FCtLNet, inria_files: dict[str, Path]) -> None:
    model = inria_mode5
    assert not model.training and model.correlation == "plain"
    slots = tensors_of(model)
    source = raw(inria_files["inria_all"])
    covered = set()
    for key, shape, _ in LAYOUT["inria_all"]:
        name = model_name(key)
        if name is None:
            assert not any(n.startswith(("backbone.vgg.classifier", "vgg.classifier")) for n in slots)
            continue
        assert tuple(slots[name].shape) == shape, key
        assert torch.equal(slots[name], source[key]), f"{key} -> {name}"
        covered.add(name)
    assert covered == set(model.trainable_state_dict()), "every trainable tensor comes from all.epoch.pth"
    assert len(covered) == 71
    # Spot checks written out by hand.
    features = model.backbone.vgg.features
    assert torch.equal(model.large.conv_query.weight, source["module.big_attention.conv_query_1.weight"])
    assert torch.equal(model.large.conv_key.bias, source["module.big_attention.conv_key_1.bias"])
    assert torch.equal(model.big.conv_value.weight, source["module.big_attention.conv_value.weight"])
    assert torch.equal(model.big.gamma, source["module.big_attention.gamma"])
    assert torch.equal(model.large.gamma, source["module.big_attention.gamma_1"])
    assert torch.equal(model.local.gamma, source["module.big_attention.gamma_2"])
    assert torch.equal(model.local.conv_key.weight, source["module.big_attention.conv_key_2.weight"])
    assert torch.equal(model.fusion.in_1.weight, source["module.big_attention.in_1.weight"])
    assert torch.equal(model.fusion.in_3.bias, source["module.big_attention.in_3.bias"])
    assert torch.equal(model.fusion.trans.weight, source["module.big_attention.trans.weight"])
    assert torch.equal(model.fusion.out_2.bias, source["module.big_attention.out_2.bias"])
    assert torch.equal(features[28].weight, source["module.pool5.4.weight"])
    assert torch.equal(features[17].bias, source["module.pool4.0.bias"])
    assert torch.equal(model.backbone.output[6].weight, source["module.output.6.weight"])
    assert not torch.equal(model.big.conv_query.weight, model.large.conv_query.weight)
    # Frozen parts stay frozen after loading.
    assert not model.backbone.up_final.weight.requires_grad
    for encoder in model.frozen_encoders():
        assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


@RELEASED
@pytest.mark.parametrize(("attribute", "kind"), [("context_encoder", "B10"), ("context2_encoder", "B15")])
def test_frozen_encoders_hold_b10_and_b15(inria_mode5: FCtLNet, inria_files: dict[str, Path], attribute: str,
                                          kind: str) -> None:
    encoder = getattr(inria_mode5, attribute)
    slots = {"backbone." + n: t for n, t in encoder.state_dict(keep_vars=True).items()}
    assert set(slots) == {n for n in (model_name(k) for k, _, _ in LAYOUT[kind]) if n and n.startswith(
        "backbone.vgg.features.")}, "the encoder holds the VGG features only"
    source = raw(inria_files[kind])
    checked = 0
    for key, _, _ in LAYOUT[kind]:
        name = model_name(key)
        if name in slots:  # vgg.features.*, pool3/4/5.* and big_pool3/4/5.* (the same tensors)
            assert torch.equal(slots[name], source[key]), f"{kind}: {key} -> {attribute}.{name}"
            checked += 1
    assert checked == 26 * 3
    other = "B15" if kind == "B10" else "B10"
    assert not torch.equal(encoder.vgg.features[0].weight, raw(inria_files[other])["module.vgg.features.0.weight"])
    assert not torch.equal(encoder.vgg.features[0].weight, inria_mode5.backbone.vgg.features[0].weight)


@RELEASED
@torch.no_grad()
def test_loaded_mode5_predicts(inria_mode5: FCtLNet) -> None:
    generator = torch.Generator().manual_seed(4)
    x, medium, large = (torch.rand(1, 3, SIZE, SIZE, generator=generator) for _ in range(3))
    out = inria_mode5(x, NetworkInputs(medium=medium, large_window=large))
    assert out.shape == (1, N_CLASS, SIZE, SIZE) and torch.isfinite(out).all()


@RELEASED
@pytest.mark.parametrize("kind", ["B10", "B15"])
def test_b10_and_b15_into_mode2(inria_files: dict[str, Path], kind: str) -> None:
    model = create_model(2, "fcn8_vgg16", pre_path=inria_files[kind], n_class=N_CLASS, correlation="plain")
    assert not hasattr(model, "large") and not hasattr(model, "local") and not hasattr(model, "fusion")
    slots = tensors_of(model)
    source = raw(inria_files[kind])
    covered = set()
    for key, shape, _ in LAYOUT[kind]:
        name = model_name(key)
        if name is None or name.split(".", 1)[0] in ("large", "local", "fusion"):
            continue  # the classifier and the block's never-trained branches have no place in mode 2
        assert tuple(slots[name].shape) == shape, key
        assert torch.equal(slots[name], source[key]), f"{key} -> {name}"
        covered.add(name)
    assert covered == set(model.trainable_state_dict())
    assert torch.equal(model.big.conv_key.weight, source["module.big_attention.conv_key.weight"])
    assert torch.equal(model.big.gamma, source["module.big_attention.gamma"])
    assert torch.equal(model.backbone.vgg.features[24].weight, source["module.big_pool5.0.weight"])
    with torch.no_grad():
        out = model(torch.rand(1, 3, SIZE, SIZE), NetworkInputs(medium=torch.rand(1, 3, SIZE, SIZE)))
    assert out.shape == (1, N_CLASS, SIZE, SIZE) and torch.isfinite(out).all()


# --- 4. loading errors -------------------------------------------------------------------------------


@RELEASED
def test_inria_file_needs_the_plain_correlation(inria_files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="correlation") as caught:
        create_model(2, "fcn8_vgg16", pre_path=inria_files["B10"], n_class=N_CLASS, correlation="centred")
    assert "plain" in str(caught.value) and str(inria_files["B10"]) in str(caught.value)
    with pytest.raises(CheckpointError, match="correlation"):
        create_model(5, "fcn8_vgg16", pre_path=inria_files["inria_all"], c_path=inria_files["B10"],
                     c2_path=inria_files["B15"], n_class=N_CLASS, correlation="centred")


@RELEASED
def test_all_is_not_a_mode2_file(inria_files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="mode-5") as caught:
        create_model(2, "fcn8_vgg16", pre_path=inria_files["inria_all"], n_class=N_CLASS, correlation="plain")
    assert str(inria_files["inria_all"]) in str(caught.value) and "\n" not in str(caught.value)


@RELEASED
def test_b10_is_not_a_mode5_file_for_inference(inria_files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="mode-2") as caught:
        create_model(5, "fcn8_vgg16", pre_path=inria_files["B10"], c_path=inria_files["B10"],
                     c2_path=inria_files["B15"], n_class=N_CLASS, correlation="plain")
    assert str(inria_files["B10"]) in str(caught.value)


@RELEASED
def test_inria_file_into_a_seven_class_model(inria_files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="classes") as caught:
        create_model(5, "fcn8_vgg16", pre_path=inria_files["inria_all"], c_path=inria_files["B10"],
                     c2_path=inria_files["B15"], n_class=7, correlation="plain")
    assert "2 classes" in str(caught.value)
    with pytest.raises(CheckpointError, match="classes"):
        create_model(2, "fcn8_vgg16", pre_path=inria_files["B10"], n_class=7, correlation="plain", training=True)


@RELEASED
def test_mode5_training_starts_as_b10_entire(inria_files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="models.setup"):
        model = create_model(5, "fcn8_vgg16", pre_path=inria_files["B10"], c_path=inria_files["B10"],
                             c2_path=inria_files["B15"], n_class=N_CLASS, correlation="plain", training=True)
    assert model.training and not model.context_encoder.training and not model.context2_encoder.training
    assert f"`pre_path`: loaded 71 tensors from {inria_files['B10']}" in caplog.text
    assert "starting fresh" not in caplog.text
    source = raw(inria_files["B10"])
    slots = tensors_of(model)
    for key, _, _ in LAYOUT["B10"]:
        name = model_name(key)
        if name is not None:
            assert torch.equal(slots[name], source[key]), f"{key} -> {name}"
    # B10 is the model itself and its medium-window encoder: same VGG in both.
    assert torch.equal(model.context_encoder.vgg.features[10].weight, model.backbone.vgg.features[10].weight)
    assert model.backbone.vgg.features[10].weight.requires_grad and model.large.gamma.requires_grad
    report = load_weights(FCtLNet(5, "fcn8_vgg16", N_CLASS, correlation="plain"), inria_files["B10"],
                          what="`pre_path`", allow_missing=True)
    assert len(report.loaded) == 71 and report.missing == [] and report.unexpected == []


# --- 5. mode 5 on an FPN backbone --------------------------------------------------------------------


def test_fpn_mode5_trains_only_its_own_part(mode5_models: dict[str, FCtLNet]) -> None:
    model = mode5_models["fpn_resnet18"]
    assert model.big.conv_key.weight.shape == (256, 128, 1, 1)
    assert model.large.conv_value.weight.shape == (256, 128, 1, 1)
    assert model.local.conv_key.weight.shape == (256, 256, 1, 1)
    assert model.fusion.trans.weight.shape == (768, 768, 1, 1)
    for encoder in (model.context_encoder, model.context2_encoder):
        assert [n for n, _ in encoder.named_children()] == ["body", "top", "fpn", "head"]
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        assert not model.context_encoder.training and not model.context2_encoder.training
        generator = torch.Generator().manual_seed(5)
        x, medium, large = (torch.rand(2, 3, SIZE, 48, generator=generator) for _ in range(3))
        out = model(x, NetworkInputs(medium=medium, large_window=large))
        assert out.shape == (2, N_CLASS, SIZE, 48)
        out.pow(2).mean().backward()
        for name, param in model.named_parameters():
            if name.startswith(("context_encoder.", "context2_encoder.")):
                assert param.grad is None and not param.requires_grad, name
            else:
                assert param.grad is not None, name
        for block in (model.big, model.large, model.local):
            assert block.conv_query.weight.grad.abs().sum() > 0 and block.gamma.grad.abs().sum() > 0
        for part in _FUSION_PARTS:
            assert getattr(model.fusion, part).weight.grad.abs().sum() > 0, part
        assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
