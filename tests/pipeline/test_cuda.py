"""The pipeline's CUDA-only paths: autocast in bf16 and fp16 on the GPU (float32 logits, the float32 mask
on nearly every pixel) and channels_last batches for a channels_last model (what the command line runs
on CUDA). Untrained, seeded networks on a 96 px scene of the tiny data set, 64 px patches: seconds on
one GPU. Skipped, with the reason, where torch sees no CUDA GPU (tests/conftest.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from dataset.split_layout import SplitDataset
from models.fctl import FCtLNet
from pipeline.config import AMP_DTYPES, PipelineConfig
from pipeline.predictor import Predictor

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
CFG = PipelineConfig(size_p=64, size_g=64, context=3, sub_batch_size=4)  # 96 px image: 2 x 2 patches a view


@pytest.fixture(scope="module")
def image(tiny_data) -> torch.Tensor:
    """A 96 px scene (uint8 (3, 96, 96)) on the GPU: structured land cover, not noise."""
    return SplitDataset(tiny_data, "crossvali", labelled=True)[0]["image"].to(CUDA)


@pytest.fixture(scope="module")
def nets():
    """nets(backbone, mode): a seeded, untrained FCtLNet in eval mode on the GPU, built once per module.
    Correlation gates start at 1 so that the context branches of modes 2-4 change the logits."""
    cache = {}

    def get(backbone: str, mode: int):
        if (backbone, mode) not in cache:
            torch.manual_seed(0)
            cache[backbone, mode] = FCtLNet(mode, backbone, gamma_init=1.0).to(CUDA).eval()
        return cache[backbone, mode]

    yield get
    cache.clear()
    torch.cuda.empty_cache()


@pytest.fixture
def ieee_fp32():
    """Full float32 convolutions and matmuls for the float32 references (cuDNN runs float32 convolutions
    in TF32 by default on Ampere and later); restored afterwards, as torch's own ``tf32_off`` does."""
    matmul = torch.backends.cuda.matmul
    # Restore the precision setting itself where torch has it (>= 2.9): writing allow_tf32 back cannot
    # give its unset default.
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    saved = getattr(matmul, name)
    with torch.backends.cudnn.flags(enabled=None, benchmark=None, deterministic=None, allow_tf32=False):
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            setattr(matmul, name, saved)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of pixels whose class (argmax over dim 0 of logits (C, H, W), or a mask (H, W)) is the same."""
    if a.dim() == 3:
        a, b = a.argmax(0), b.argmax(0)
    return (a == b).float().mean().item()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize(("backbone", "mode"), [("fpn_resnet18", 4), ("fpn_resnet18", 1), ("fcn8_vgg16", 1)])
def test_amp_forward_on_cuda_gives_float32_logits_close_to_float32(backbone, mode, amp, nets, image, ieee_fp32):
    """Every convolution (frozen encoders and the global context included) runs in the AMP dtype, the
    merged logits are float32 and finite, and their classes are float32's on >= 95% of the pixels."""
    net = nets(backbone, mode)
    reference = Predictor(net, CFG).logits(image)
    dtype = AMP_DTYPES[amp]
    seen = set()
    hooks = [m.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        logits = Predictor(net, dataclasses.replace(CFG, amp=True, amp_dtype=dtype)).logits(image)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {dtype}
    assert logits.dtype == torch.float32 and logits.device.type == "cuda"
    assert logits.shape == reference.shape == (7, 96, 96)
    assert bool(torch.isfinite(logits).all())
    share = agreement(logits, reference)
    assert share >= 0.95, share
    error = ((logits - reference).abs().mean() / reference.abs().mean()).item()
    assert error <= 0.05, error  # measured on the CPU: about 0.007 for bf16, 0.001 for fp16


@pytest.mark.parametrize("mode", [0, 2, 4])
def test_a_channels_last_model_gets_channels_last_batches_and_the_same_mask(mode, nets, image, ieee_fp32):
    """Mode 0: the resized whole image; 2: patches and medium contexts through one backbone; 4: patches,
    medium contexts and the global context. Compared with TTA, in full float32 (TF32 off) so that only
    the kernels' summation order differs."""
    net = nets("fpn_resnet18", mode)
    plain = Predictor(net, CFG)
    assert not plain.channels_last
    reference = plain.logits(image, tta=True)
    reference_mask = plain.predict(image, tta=True)

    moved = copy.deepcopy(net).to(memory_format=torch.channels_last)  # what train_deep_globe.py does on CUDA
    predictor = Predictor(moved, CFG)
    assert predictor.channels_last
    formats = []

    def record(module, args, kwargs):
        for x in (args[0], kwargs.get("medium")):
            if x is not None:
                formats.append(x.is_contiguous(memory_format=torch.channels_last))

    handle = moved.register_forward_pre_hook(record, with_kwargs=True)
    try:
        predictor.logits(image)  # the identity view (odd quarter turns of the global image are not channels_last)
    finally:
        handle.remove()
    assert formats and all(formats), formats
    logits = predictor.logits(image, tta=True)
    mask = predictor.predict(image, tta=True)
    assert logits.dtype == torch.float32 and mask.dtype == torch.uint8
    share = agreement(mask, reference_mask)
    assert share >= 0.999, share
    assert agreement(logits, reference) >= 0.999
    torch.testing.assert_close(logits, reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item())


@pytest.mark.parametrize("mode", [1, 4])
def test_a_windowed_source_on_the_gpu_gives_the_in_memory_mask(image, nets, mode):
    """Windows assembled on the CPU and moved to the GPU give the mask of the image held on the GPU."""
    from pipeline.sources import WindowedSource
    from tests.pipeline.array_reader import ArrayReader

    predictor = Predictor(nets("fpn_resnet18", mode), CFG)
    source = WindowedSource(ArrayReader(image.cpu().numpy()), CUDA, block=32, capacity=4)
    assert torch.equal(predictor.predict(source, tta=True), predictor.predict(image, tta=True))


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_the_refinement_on_the_gpu_matches_the_cpu_and_streams_bit_for_bit(image, nets, amp, ieee_fp32):
    """A refined mode-4 prediction on CUDA (float32, and under bf16 autocast) agrees with the CPU one, and a
    windowed source on the GPU gives the bits of the image held there."""
    from models.refinement import RefinementNet, RefinementRecord
    from pipeline.refine import Refinement
    from pipeline.sources import WindowedSource
    from tests.pipeline.array_reader import ArrayReader

    torch.manual_seed(0)
    refiner = RefinementNet(RefinementRecord(4, "fpn_resnet18", 7, "centred", None, "global")).eval()
    torch.nn.init.normal_(refiner.head.weight, std=0.1)
    cfg = dataclasses.replace(CFG, amp=amp is not None, amp_dtype=AMP_DTYPES[amp or "bf16"])
    gpu = Predictor(nets("fpn_resnet18", 4), cfg, Refinement(refiner.to(CUDA), nets("fpn_resnet18", 0), tile=48))
    logits = gpu.logits(image, tta=True)
    assert logits.device.type == "cuda" and logits.dtype == torch.float32
    source = WindowedSource(ArrayReader(image.cpu().numpy()), CUDA, block=32, capacity=4)
    assert torch.equal(torch.cat([b for _, b in gpu.logit_bands(source, tta=True)], dim=1), logits)
    cpu_refiner = copy.deepcopy(refiner).cpu()
    cpu = Predictor(copy.deepcopy(nets("fpn_resnet18", 4)).cpu(), CFG,
                    Refinement(cpu_refiner, copy.deepcopy(nets("fpn_resnet18", 0)).cpu(), tile=48))
    reference = cpu.logits(image.cpu(), tta=True)
    assert agreement(logits.cpu(), reference) >= (0.999 if amp is None else 0.99)
