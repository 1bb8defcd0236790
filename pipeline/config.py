"""The settings of the patch pipeline: geometry, batching, mixed precision and the merge rule."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from utils.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# How overlapping patch logits are merged: "sum" adds them (the released rule); "hann" weighs each patch by
# a window falling towards its edges and takes the weighted mean (``pipeline.merge.HannWindows``).
MERGES = ("sum", "hann")


@dataclass(frozen=True)
class PipelineConfig:
    """Geometry, batching and merge rule of the patch pipeline (the options of the same names).

    ``merge`` is one of ``MERGES``; it applies wherever patches are merged (every mode but the whole-image
    one, which has no patches); ConfigError names `merge` for any other value.
    """

    size_p: int
    size_g: int
    context: int = 3
    sub_batch_size: int = 6
    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16
    context2: int = 3  # the large window of mode 5 (context2 x size_p)
    merge: str = "sum"

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise ConfigError(f"`merge` must be one of {', '.join(MERGES)}, got {self.merge!r}")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast to ``amp_dtype`` on ``device`` when ``amp`` is on, else nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)
