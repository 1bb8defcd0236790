"""Backbone registry: one place that maps a ``--backbone`` name to a segmentation network.

Every backbone has ``name``, ``top_channels``, ``encode(x) -> (skips, top)`` and, when built with
head=True, ``decode(skips, top, size) -> logits``; every input side from 1 px up works, in training
too (no BatchNorm). FCtL's context modules only ever touch ``top``, so any backbone with this
interface works in every mode.
"""

import torch.nn as nn

from models.fcn8 import FCN8
from models.fpn import FPNResNet
from utils.errors import OptionError

BACKBONES = ("fcn8_vgg16", "fpn_resnet18", "fpn_resnet50")


def build_backbone(name: str, n_class: int, head: bool = True, pretrained: bool = False) -> nn.Module:
    """Build backbone ``name``; head=False builds only what ``encode`` needs (for frozen encoders).

    pretrained=True starts from ImageNet weights (raises CheckpointError when they cannot be fetched).
    """
    if name == "fcn8_vgg16":
        return FCN8(n_class, head=head, pretrained=pretrained)
    if name == "fpn_resnet18":
        return FPNResNet(18, n_class, head=head, pretrained=pretrained)
    if name == "fpn_resnet50":
        return FPNResNet(50, n_class, head=head, pretrained=pretrained)
    raise OptionError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
