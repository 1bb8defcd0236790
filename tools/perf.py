"""Measurements behind tools/benchmark.py's ceiling, stage profile and training rows.

- ``conv_ceiling``: what this machine's convolutions reach at the networks' own shapes (GFLOP/s), in
  both memory formats (and bf16/fp16 on CUDA): the ceiling the forwards are compared with.
- ``profile_stages``: where the time of one mode-4 sub-batch goes, stage by stage, for FCN8 and the
  FPN backbones. It calls the same pieces ``FCtLNet.forward`` and the predictor call, in the same order.
- ``training_steps``: optimizer steps per second of the real training step (``Trainer.train_step``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.fcn8 import FCN8, POOL3_END, POOL4_END
from models.padded_vgg import PaddedVGG


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 1) -> tuple[float, object]:
    """(seconds per call, last result) of ``fn`` after one warm-up call."""
    out = fn()
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    _sync(device)
    return (time.perf_counter() - started) / repeat, out


def conv_shapes(backbone: str, size_p: int, batch: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(label, input shape, weight shape) of representative convolutions of ``backbone`` at patch ``size_p``."""
    if backbone == "fcn8_vgg16":
        side = size_p + 198  # conv1_1's padding
        return [("vgg conv2 128->128 3x3", (batch, 128, side // 2, side // 2), (128, 128, 3, 3)),
                ("vgg conv3 256->256 3x3", (batch, 256, side // 4, side // 4), (256, 256, 3, 3)),
                ("vgg conv4 512->512 3x3", (batch, 512, side // 8, side // 8), (512, 512, 3, 3))]
    side = max(1, size_p // 8)
    return [("resnet layer2 128->128 3x3", (batch, 128, side, side), (128, 128, 3, 3)),
            ("resnet layer3 256->256 3x3", (batch, 256, max(1, side // 2), max(1, side // 2)), (256, 256, 3, 3))]


def conv_ceiling(backbone: str, size_p: int, batch: int, device: torch.device, repeat: int = 3) -> list[dict]:
    """GFLOP/s of the shapes of ``conv_shapes`` per memory format and (on CUDA) precision."""
    dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if device.type == "cuda" else [])
    rows = []
    for label, x_shape, w_shape in conv_shapes(backbone, size_p, batch):
        flops = 2 * x_shape[0] * x_shape[2] * x_shape[3] * w_shape[0] * w_shape[1] * w_shape[2] * w_shape[3]
        for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            for dtype in dtypes:
                x = torch.rand(x_shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
                w = torch.rand(w_shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
                with torch.inference_mode():
                    seconds, _ = timed(lambda x=x, w=w: F.conv2d(x, w, padding=1), device, repeat)
                rows.append({"conv": label, "format": fmt_name, "dtype": str(dtype).replace("torch.", ""),
                             "gflops_per_s": flops / seconds / 1e9})
    return rows


def _vgg_blocks(backbone: FCN8, x: torch.Tensor, stage: Callable) -> torch.Tensor:
    """VGG's five blocks on ``x`` without autograd, each timed as a stage, the way FCN8.encode runs
    them (on the cores of the background plan when the padding is skipped)."""
    features = backbone.vgg.features
    bounds = [(0, 5), (5, 10), (10, POOL3_END), (POOL3_END, POOL4_END), (POOL4_END, len(features))]
    if backbone.skip_padding and PaddedVGG.applies(features[0]):
        plan = backbone.padding_plan(x)
        core = stage("vgg conv1 block", lambda: plan.run(plan.start(x), 1, 5))
        for i, (lo, hi) in enumerate(bounds[1:], start=2):
            core = stage(f"vgg conv{i} block", lambda lo=lo, hi=hi, c=core: plan.run(c, lo, hi))
        return plan.full(core, len(features))
    for i, (lo, hi) in enumerate(bounds, start=1):
        x = stage(f"vgg conv{i} block", lambda lo=lo, hi=hi, x=x: features[lo:hi](x))
    return x


def profile_stages(predictor, image: torch.Tensor, repeat: int = 1) -> list[tuple[str, float]]:
    """Seconds of each stage of one sub-batch of a mode-4 model on ``image`` (uint8 (3, H, W) on the
    model's device), in the order the pipeline runs them; the last row is the whole model forward."""
    from models.inputs import NetworkInputs
    from pipeline.contexts import context_windows, global_view
    from pipeline.grid import make_grid
    from pipeline.sources import TensorSource

    net, cfg, device = predictor.net, predictor.cfg, predictor.device
    if net.mode != 4:
        raise ValueError("the stage profile is of a mode-4 model")
    rows: list[tuple[str, float]] = []

    def stage(name: str, fn: Callable):
        seconds, out = timed(fn, device, repeat)
        rows.append((name, seconds))
        return out

    p, source = cfg.size_p, TensorSource(image)
    grid = make_grid(image.shape[1], image.shape[2], p).boxes()
    boxes = [grid[i % len(grid)] for i in range(cfg.sub_batch_size)]  # a full sub-batch, repeating if need be
    tops, lefts = [t for t, _ in boxes], [left for _, left in boxes]
    with torch.inference_mode():
        x = stage("crop patches", lambda: predictor.to_memory_format(
            torch.stack([source.window(t, left, p, p) for t, left in boxes]).float().div_(255)))
        medium = stage("medium windows (resize)", lambda: predictor.to_memory_format(
            context_windows(source, tops, lefts, p, cfg.context)))
        small = stage("global view (resize)", lambda: predictor.to_memory_format(global_view(source, cfg.size_g)))
        g = stage("global encoder (once per image)", lambda: net.encode_global(small))
        backbone = net.backbone
        if isinstance(backbone, FCN8):
            skips, top = stage("vgg blocks, patches", lambda: backbone.encode(x))
            _vgg_blocks(backbone, x, lambda name, fn: stage(f"  {name}", fn))
        else:
            skips, top = stage("resnet + top, patches", lambda: backbone.encode(x))
        context = stage("frozen context encoder", lambda: net.context_encoder.context(medium))
        local = stage("local correlation", lambda: net.local(top, top))
        med = stage("medium correlation", lambda: net.medium(top, context))
        large = stage("large correlation", lambda: net.large(top, g))
        fused = stage("fusion", lambda: top + net.fusion([local, med, large]))
        if isinstance(backbone, FCN8):
            head = stage("head conv6 (7x7, 512->4096)", lambda: backbone.output[:2](fused))
            scores = stage("head conv7 + classifier", lambda: backbone.output[2:](head))
            stage("skips, transposed convs, crop", lambda: backbone.upsample_scores(skips, scores, (p, p)))
        else:
            stage("fpn + head + upsampling", lambda: backbone.decode(skips, fused, (p, p)))
        stage("whole model forward", lambda: net(x, NetworkInputs(medium=medium, global_context=g)))
    return rows


def training_steps(mode: int, backbone: str, size: int, size_p: int, sub_batch_size: int, device: torch.device,
                   steps: int = 3, batch: int = 1, channels_last: bool | None = None) -> dict:
    """Optimizer steps per second of ``Trainer.train_step`` on random images (``batch`` per step), the
    model stored in the memory format ``train_deep_globe.py`` trains in (``memory_format_for``) unless
    ``channels_last`` says otherwise."""
    from engine.training import Trainer, TrainingPlan
    from models.backbones import memory_format_for
    from models.fctl import FCtLNet
    from pipeline.config import PipelineConfig
    from utils.loss import FocalLoss

    torch.manual_seed(0)
    model = FCtLNet(mode, backbone, n_class=7).to(device).train()
    if channels_last is None:
        channels_last = memory_format_for(backbone, device.type, training=True) == torch.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-6)
    cfg = PipelineConfig(size_p, size_p, 3, sub_batch_size)
    trainer = Trainer(model, optimizer, [], FocalLoss(gamma=3.0), cfg, TrainingPlan(epochs=1, lr=1e-6), device=device)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, device=device) for _ in range(batch)]
    labels = [torch.randint(0, 7, (size, size), dtype=torch.uint8, device=device) for _ in range(batch)]
    seconds, _ = timed(lambda: trainer.train_step(trainer.units(images, labels)), device, steps)
    patches = sum(1 for _ in trainer.units(images, labels)) if not model.spec.whole_image else batch
    return {"mode": mode, "backbone": backbone, "image": size, "size_p": size_p, "channels_last": channels_last,
            "seconds_per_step": seconds,
            "steps_per_second": 1.0 / seconds, "sub_batches_per_step": patches}
