"""FCtL correlation and adaptive fusion against direct, loop-based evaluations of their formulas."""

import math

import pytest
import torch

from models.correlation import FCtLCorrelation
from models.fusion import AdaptiveFusion


@torch.no_grad()
def conv1x1(weight: torch.Tensor, bias: torch.Tensor | None, feat: torch.Tensor) -> list[list[float]]:
    """feat (C,h,w) -> per-position output vectors, by explicit sums: out[n][o]."""
    channels, height, width = feat.shape
    rows = []
    for i in range(height):
        for j in range(width):
            vec = []
            for o in range(weight.shape[0]):
                total = float(bias[o]) if bias is not None else 0.0
                for c in range(channels):
                    total += float(weight[o, c, 0, 0]) * float(feat[c, i, j])
                vec.append(total)
            rows.append(vec)
    return rows


@torch.no_grad()
def correlation_reference(block: FCtLCorrelation, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The spec's formula, one position at a time, in Python floats (float64)."""
    batch, channels, height, width = x.shape
    out = torch.zeros(batch, channels, height, width, dtype=torch.float64)
    gamma = float(block.gamma)
    for b in range(batch):
        yb = y[b if y.shape[0] > 1 else 0]
        query = conv1x1(block.conv_query.weight, block.conv_query.bias, x[b])
        key = conv1x1(block.conv_key.weight, block.conv_key.bias, yb)
        value = conv1x1(block.conv_value.weight, None, yb)
        for rows in (query, key):
            for c in range(channels):
                mean = sum(r[c] for r in rows) / len(rows)
                for r in rows:
                    r[c] -= mean
        for n, q in enumerate(query):
            scores = [sum(q[c] * k[c] for c in range(channels)) for k in key]
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            attention = [e / sum(exps) for e in exps]
            for c in range(channels):
                out[b, c, n // width, n % width] = gamma * sum(a * v[c] for a, v in zip(attention, value))
    return out


def randomise(module: torch.nn.Module, seed: int, std: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.mark.parametrize(("x_hw", "y_hw", "y_batch"), [((3, 4), (2, 5), 2), ((2, 2), (3, 3), 1)])
def test_correlation_matches_loop_reference(x_hw: tuple, y_hw: tuple, y_batch: int) -> None:
    torch.manual_seed(0)
    block = FCtLCorrelation(4).double()
    randomise(block, seed=1)
    x = torch.randn(2, 4, *x_hw, dtype=torch.float64)
    y = torch.randn(y_batch, 4, *y_hw, dtype=torch.float64)
    got = block(x, y)
    assert got.shape == x.shape
    torch.testing.assert_close(got, correlation_reference(block, x, y), rtol=1e-9, atol=1e-12)


def test_correlation_broadcast_equals_repeated_context() -> None:
    torch.manual_seed(0)
    block = FCtLCorrelation(8)
    randomise(block, seed=2, std=0.2)
    x, y = torch.randn(3, 8, 4, 4), torch.randn(1, 8, 2, 3)
    torch.testing.assert_close(block(x, y), block(x, y.expand(3, -1, -1, -1)))


@torch.no_grad()
def test_correlation_init() -> None:
    torch.manual_seed(0)
    block = FCtLCorrelation(64)
    assert [name for name, _ in block.named_parameters()] == [
        "gamma", "conv_value.weight", "conv_query.weight", "conv_query.bias", "conv_key.weight", "conv_key.bias",
    ]
    assert block.gamma.shape == (1,) and float(block.gamma.detach()) == 0.0
    assert block.conv_value.bias is None
    for conv in (block.conv_value, block.conv_query, block.conv_key):
        assert abs(float(conv.weight.std()) - 0.01) < 0.001
        assert abs(float(conv.weight.mean())) < 0.001
    assert not block.conv_query.bias.any() and not block.conv_key.bias.any()
    x = torch.randn(2, 64, 3, 3)
    assert not block(x, torch.randn(2, 64, 5, 5)).any(), "gamma 0 must make a fresh block a no-op"


@torch.no_grad()
def fusion_reference(fusion: AdaptiveFusion, feats: list[torch.Tensor]) -> torch.Tensor:
    """Spec formula with per-position matrix products and an explicit per-element softmax."""
    n, channels = fusion.branches, fusion.channels
    batch, _, height, width = feats[0].shape
    out = torch.zeros_like(feats[0])
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                cs = [f[b, :, i, j] for f in feats]
                hs = [getattr(fusion, f"in_{k + 1}").weight[:, :, 0, 0] @ cs[k] + getattr(fusion, f"in_{k + 1}").bias
                      for k in range(n)]
                t = fusion.trans.weight[:, :, 0, 0] @ torch.cat(hs) + fusion.trans.bias
                ws = []
                for k in range(n):
                    part = t[k * channels:(k + 1) * channels]
                    lin = getattr(fusion, f"out_{k + 1}").weight[:, :, 0, 0] @ part + getattr(fusion, f"out_{k + 1}").bias
                    ws.append(1.0 / (1.0 + torch.exp(-lin)))
                for c in range(channels):
                    exps = [math.exp(float(w[c])) for w in ws]
                    out[b, c, i, j] = sum(e / sum(exps) * float(cs[k][c]) for k, e in enumerate(exps))
    return out


@pytest.mark.parametrize("branches", [2, 3])
def test_fusion_matches_reference(branches: int) -> None:
    torch.manual_seed(0)
    fusion = AdaptiveFusion(4, branches).double()
    randomise(fusion, seed=3)
    feats = [torch.randn(2, 4, 2, 3, dtype=torch.float64) for _ in range(branches)]
    torch.testing.assert_close(fusion(feats), fusion_reference(fusion, feats), rtol=1e-9, atol=1e-12)


@torch.no_grad()
def test_fusion_names_init_and_convexity() -> None:
    torch.manual_seed(0)
    fusion = AdaptiveFusion(512, 3)
    names = [name for name, _ in fusion.named_parameters()]
    assert names == [f"{m}.{p}" for m in ("in_1", "in_2", "in_3", "trans", "out_1", "out_2", "out_3")
                     for p in ("weight", "bias")]
    assert fusion.trans.weight.shape == (1536, 1536, 1, 1)
    assert abs(float(fusion.trans.weight.std()) - 0.01) < 0.001 and not fusion.trans.bias.any()
    small = AdaptiveFusion(8, 3)
    randomise(small, seed=4)
    same = torch.randn(1, 8, 3, 3)
    torch.testing.assert_close(small([same, same, same]), same)
    with pytest.raises(ValueError):
        small([same, same])
