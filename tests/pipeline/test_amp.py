"""--amp on the CPU (bfloat16 autocast): the network runs in bf16, the merge stays float32, and the
entry script evaluates and trains with it. Sizes are tiny: on a CPU without native bf16 (AVX2 only, as
the test machine) bf16 convolutions measured about 40x slower than float32."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.config import PipelineConfig
from pipeline.merge import BandMerger
from pipeline.predictor import Predictor
from tests.cli.helpers import list_files, run_cli, tiny_args
from tools.stand_in import StandIn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mode", [0, 1, 4])
def test_autocast_runs_the_network_in_bf16_and_merges_in_float32(mode):
    torch.manual_seed(0)
    model = StandIn(mode, channels=2).eval()
    seen = []
    model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    merged = []
    add = BandMerger.add

    def recording_add(self, logits, top, left, weight=None):
        merged.append(logits.dtype)
        add(self, logits, top, left, weight)

    image = torch.randint(0, 256, (3, 64, 100), dtype=torch.uint8)  # 2 patches per view
    amp = Predictor(model, PipelineConfig(64, 48, 3, 5, amp=True, amp_dtype=torch.bfloat16))
    BandMerger.add = recording_add
    try:
        bands = list(amp.logit_bands(image, tta=True))
    finally:
        BandMerger.add = add
    assert set(seen) == {torch.bfloat16}
    assert all(band.dtype == torch.float32 for _, band in bands)
    assert set(merged) <= {torch.float32} and (mode == 0 or merged)
    full = Predictor(model, PipelineConfig(64, 48, 3, 5)).logits(image, tta=True)
    ours = torch.cat([band for _, band in bands], dim=1)
    assert (ours - full).abs().max() <= 0.05 * full.abs().max()  # bf16 has 8 bits of mantissa


def test_evaluation_and_training_run_with_amp_on_the_cpu(tiny_data, fpn_pre_folder, tmp_path):
    metrics = tmp_path / "amp.json"
    # One 96 px patch per image: bf16 is slow on this CPU.
    args = tiny_args(tiny_data, fpn_pre_folder, str(tmp_path / "logs"), "--mode", "1", "--amp", "--amp_dtype", "bf16",
                     "--size_p", "96", "--max_images", "1")
    assert run_cli(*args, "--pre_path", "pre.pth", "--evaluate", "--metrics_path", str(metrics)) == 0
    scores = json.loads(metrics.read_text())
    assert sum(map(sum, scores["confusion_matrix"])) == 96 * 96 and 0 <= scores["miou"] <= 1
    models = tmp_path / "trained"
    train = tiny_args(tiny_data, str(models), str(tmp_path / "logs"), "--mode", "1", "--amp", "--train",
                      "--epochs", "1", "--task_name", "amp", "--max_images", "1", "--size_p", "96")
    assert run_cli(*train) == 0
    assert {"amp.epoch.pth", "amp.last.pth"} <= set(list_files(str(models)))
