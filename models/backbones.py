"""Backbone registry: one place that maps a ``--backbone`` name to a segmentation backbone.

Every entry implements ``models.interfaces.Backbone`` (encode, decode, context_features, context;
the channel counts). FCtL's context modules add to ``top`` and read contexts only through
``context``, so any backbone with this interface works in every mode.
"""

import torch

from models.bands import RGB, InputBands
from models.fcn8 import FCN8
from models.fpn import FPNResNet
from models.interfaces import Backbone
from utils.errors import ConfigError

_BUILDERS: dict[str, tuple[type[Backbone], dict]] = {
    # name: (class, constructor arguments besides n_class / head / pretrained)
    "fcn8_vgg16": (FCN8, {}),
    "fpn_resnet18": (FPNResNet, {"depth": 18}),
    "fpn_resnet50": (FPNResNet, {"depth": 50}),
}
BACKBONES = tuple(_BUILDERS)


def _lookup(name: str) -> tuple[type[Backbone], dict]:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown `backbone` '{name}'; choose one of {', '.join(BACKBONES)}")
    return _BUILDERS[name]


def build_backbone(name: str, n_class: int, head: bool = True, pretrained: bool = False,
                   bands: InputBands = RGB) -> Backbone:
    """Build backbone ``name`` reading ``bands`` (``models.bands``); head=False builds only what ``encode``
    needs.

    pretrained=True starts from ImageNet weights (raises CheckpointError when they cannot be fetched).
    """
    cls, kwargs = _lookup(name)
    return cls(n_class=n_class, head=head, pretrained=pretrained, bands=bands, **kwargs)


def build_context_encoder(name: str, n_class: int, bands: InputBands = RGB) -> Backbone:
    """A backbone with just what ``context`` needs (for a frozen context/global encoder), random weights."""
    cls, _ = _lookup(name)
    return build_backbone(name, n_class, head=cls.context_needs_head, bands=bands)


def memory_format_for(name: str, device_type: str, training: bool) -> torch.memory_format:
    """The memory format a backbone's model is stored in, chosen by measurement (docs/performance.md,
    ``python -m tools.benchmark --channels_last`` / ``--no-channels_last``): channels_last on CUDA and
    for CPU inference (FCN8 17% and FPN-ResNet18 26% faster per image on 2 cores); for CPU training
    only the FPNs, because FCN8's backward is slower in channels_last on the CPU (4.3 against 5.5 s
    per step at 160 px)."""
    if device_type == "cpu" and training and name == "fcn8_vgg16":
        return torch.contiguous_format
    return torch.channels_last
