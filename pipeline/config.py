"""The settings of the patch pipeline: geometry, batching and mixed precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PipelineConfig:
    """Geometry and batching of the patch pipeline (the options of the same names)."""

    size_p: int
    size_g: int
    context: int = 3
    sub_batch_size: int = 6
    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16
    context2: int = 3  # the large window of mode 5 (context2 x size_p)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast to ``amp_dtype`` on ``device`` when ``amp`` is on, else nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)
