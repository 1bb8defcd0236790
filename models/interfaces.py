"""The contracts of the models package, as code.

- ``Backbone``: what FCtL's context modules need of a segmentation backbone. ``FCN8`` and
  ``FPNResNet`` implement it; ``models.backbones`` registers them by name. A new backbone subclasses
  it and gets an entry in that registry: every mode then works with it.
- ``SegmentationNetwork``: what the patch pipeline and the engine need of a network. ``FCtLNet``
  satisfies it, and so does the tests' small stand-in (``tools.stand_in``).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from models.bands import InputBands
from models.inputs import NetworkInputs
from models.modes import Mode


class Backbone(nn.Module, metaclass=ABCMeta):
    """An encoder-decoder for patches of any side from 1 px up, in training too (no BatchNorm).

    Class attributes: ``top_channels`` (C of the top features), ``context_channels`` (C' of what
    ``context`` gives), ``context_needs_head`` (whether ``context`` uses layers that exist only when
    built with ``head=True``). Instances have ``name`` (the registry name), ``n_class`` and
    ``has_head``.
    Constructors take ``n_class``, ``head`` (False: only what ``encode`` and ``context`` need) and
    ``pretrained`` (ImageNet start).
    """

    top_channels: int
    context_channels: int
    context_needs_head: bool
    name: str
    n_class: int
    has_head: bool

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for attribute, kind in (("top_channels", int), ("context_channels", int), ("context_needs_head", bool)):
            if not isinstance(getattr(cls, attribute, None), kind):
                raise TypeError(f"backbone {cls.__name__} must set the class attribute {attribute} ({kind.__name__})")

    @abstractmethod
    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (B, 3, p, p) in [0, 1] -> (skips, top (B, top_channels, h, w)); what the decoder needs."""

    @abstractmethod
    def decode(self, skips: list[torch.Tensor], top: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(skips, top) of ``encode`` (top possibly changed by the context modules) -> logits (B, n_class, *size)."""

    @abstractmethod
    def context_features(self, skips: list[torch.Tensor], top: torch.Tensor) -> torch.Tensor:
        """(skips, top) of ``encode`` -> what a correlation block reads (B, context_channels, h', w')."""

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """A context image x (B, 3, s, s) in [0, 1] -> ``context_features`` of its encoding."""
        return self.context_features(*self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, p, p) -> logits (B, n_class, p, p): encode and decode, no context."""
        skips, top = self.encode(x)
        return self.decode(skips, top, (x.shape[2], x.shape[3]))


@runtime_checkable
class SegmentationNetwork(Protocol):
    """What ``pipeline.Predictor``, the training units and the engine use of a network.

    ``spec`` says what the network computes and reads (``models.modes.Mode``); calling it with the
    patches x (B, bands, p, p) in [0, 1] and the ``NetworkInputs`` built for them (``pipeline.inputs``)
    gives logits (B, n_class, p, p); ``encode_global`` turns the resized whole image (1, bands, g, g)
    into the ``global_context`` the modes reading it take, without gradients. ``bands``: what it reads
    per pixel (``models.bands.InputBands``; bands = ``bands.count``).
    """

    n_class: int
    bands: InputBands

    @property
    def spec(self) -> Mode: ...

    @property
    def mode(self) -> int: ...

    @property
    def backbone_name(self) -> str: ...

    def encode_global(self, global_image: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, inputs: NetworkInputs = ...) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True): ...

    def train(self, mode: bool = True) -> SegmentationNetwork: ...

    def eval(self) -> SegmentationNetwork: ...
