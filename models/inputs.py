"""What a network reads besides its patches: one value, named field by field.

A forward pass takes the patches x (B, 3, p, p) and a ``NetworkInputs``. Which of its fields a mode
reads is declared once, in ``models.modes`` (``Mode.extra_inputs``); ``pipeline.inputs`` is the one place
that builds the value from an image, and ``NetworkInputs.check`` is the one place a network checks it.
A new kind of input is a new field here, its name in the ``Mode.extra_inputs`` of the modes that read
it, its construction in ``pipeline.inputs`` (a window also needs a ``WINDOWS`` entry there and its
side in ``PipelineConfig``), and its use in the network's ``forward``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.modes import Mode


@dataclass(frozen=True, eq=False)
class NetworkInputs:
    """The contexts of a batch of B patches, each None when the mode does not read it.

    - ``medium`` (B, 3, p, p) float: the medium window (``context`` x p, centred on the patch) shrunk
      to p x p (modes 2, 4, 5);
    - ``global_context`` (1 | B, C', hg, wg) float: what the frozen global encoder gives for the whole
      image resized to ``size_g`` (modes 3, 4), computed once per image (and view);
    - ``large_window`` (B, 3, p, p) float: the large window (``context2`` x p) shrunk to p x p (mode 5).
    """

    medium: torch.Tensor | None = None
    global_context: torch.Tensor | None = None
    large_window: torch.Tensor | None = None

    def check(self, spec: Mode) -> None:
        """Raise ValueError naming every field that ``spec`` reads but this value lacks."""
        missing = [name for name in spec.extra_inputs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"mode {spec.number} reads {', '.join(missing)} besides the patches; build its inputs "
                             f"with pipeline.inputs")

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> NetworkInputs:
        """The same value with ``fn`` applied to every present tensor (a memory format, a device)."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if getattr(self, f.name) is not None})


NO_INPUTS = NetworkInputs()
