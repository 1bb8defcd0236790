"""A tiny network with FCtLNet's interface (``models.interfaces.SegmentationNetwork``), for testing and
benchmarking the pipeline at sizes a CPU handles in seconds.

It is deliberately NOT rotation-equivariant (3x3 convolutions with random weights) and it uses every
input its mode reads, so a mistake in how views, boxes, windows or the global image are mapped changes
its output.
"""

from __future__ import annotations

import torch
from torch import nn

from models.bands import RGB
from models.inputs import NO_INPUTS, NetworkInputs
from models.modes import Mode, mode_spec


class _Encoder(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class StandIn(nn.Module):
    """Stand-in of every mode: out = head(enc(x) + enc(medium) + corner of global_context + enc(large_window)),
    each context term added when ``inputs`` holds it (``pipeline.inputs`` gives exactly what the mode
    reads; a forward without one of those is refused, as FCtLNet refuses it)."""

    backbone_name = "stand_in"
    n_class = 7
    bands = RGB

    def __init__(self, mode: int = 4, channels: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.spec: Mode = mode_spec(mode)
        self.mode = mode
        self.encoder = _Encoder(channels)
        self.context_encoder = _Encoder(channels)
        self.global_encoder = _Encoder(channels)
        self.head = nn.Conv2d(channels, self.n_class, 3, padding=1)
        self.context2_encoder = _Encoder(channels)

    def encode_global(self, global_image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.global_encoder(global_image)

    def forward(self, x: torch.Tensor, inputs: NetworkInputs = NO_INPUTS) -> torch.Tensor:
        inputs.check(self.spec)
        h = self.encoder(x)
        if inputs.medium is not None:
            h = h + self.context_encoder(inputs.medium)
        if inputs.large_window is not None:
            h = h + self.context2_encoder(inputs.large_window)
        if inputs.global_context is not None:
            # The corner value, not a mean: it changes when the global image is turned the wrong way.
            h = h + inputs.global_context[:, :, :1, :1].expand(x.shape[0], -1, -1, -1)
        return self.head(h)
