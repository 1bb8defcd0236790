"""tools/perf.py: the benchmark's ceiling, stage profile and training rows on tiny sizes."""

from __future__ import annotations

import pytest
import torch

from models.fctl import FCtLNet
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor
from tools.perf import conv_ceiling, profile_stages, training_steps

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def test_ceiling_rows_cover_both_memory_formats():
    rows = conv_ceiling("fpn_resnet18", 64, 2, CPU, repeat=1)
    assert {row["format"] for row in rows} == {"contiguous", "channels_last"}
    assert all(row["dtype"] == "float32" and row["gflops_per_s"] > 0 for row in rows)


def test_profile_lists_every_stage_of_a_mode4_sub_batch():
    torch.manual_seed(0)
    predictor = Predictor(FCtLNet(4, "fpn_resnet18", n_class=3).eval(), PipelineConfig(64, 64, 3, 3))
    image = torch.randint(0, 256, (3, 96, 80), dtype=torch.uint8)
    names = [name for name, seconds in profile_stages(predictor, image) if seconds >= 0]
    assert names[0] == "crop patches" and names[-1] == "whole model forward"
    assert {"frozen context encoder", "local correlation", "fusion", "fpn + head + upsampling"} <= set(names)
    with pytest.raises(ValueError, match="mode-4"):
        profile_stages(Predictor(FCtLNet(1, "fpn_resnet18", n_class=3).eval(), PipelineConfig(64, 64)), image)


@pytest.mark.slow  # real FCN8 training steps
@pytest.mark.parametrize("mode", [1, 2])
def test_training_steps_run_the_real_step(mode):
    row = training_steps(mode, "fpn_resnet18", 96, 64, 4, CPU, steps=1)
    assert row["mode"] == mode and row["steps_per_second"] > 0
    assert row["sub_batches_per_step"] == 4  # a 96 px image has 4 x 4 patches of 64 px, 4 per sub-batch
