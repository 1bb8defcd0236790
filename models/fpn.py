"""ResNet + feature pyramid backbones (lighter alternatives to FCN8, not part of the released system).

Body: a torchvision ResNet up to layer4, giving C2..C5 (strides 4, 8, 16, 32). Top: ReLU(GN(Conv1x1(C5)))
with 256 channels, the feature the FCtL correlations add to (256 rather than 2048 keeps them cheap).
The FPN (torchvision.ops.FeaturePyramidNetwork, 128 channels) reads [C2, C3, C4, top]; the head sums the
pyramid levels at P2 resolution, applies 3x3 conv + GN + ReLU and a 1x1 classifier, then up-samples
bilinearly to the input size (GLNet-style). What the correlations read from a context is the head's
features before the classifier, pooled to the top grid (``context_features``).

Normalisation is GroupNorm (32 groups) everywhere, the ResNet body included, never BatchNorm. A training
batch here is the patches of ONE image, so batch statistics carry image-level information into every
patch: a "patch-only" mode-1 model learns to read the scene from them during training and loses it at
test time, when running statistics replace them, and the context modules, whose job that is, never learn.
GroupNorm normalises each patch on its own, the same in training and test. From ImageNet, the convolutions and the
BatchNorm scale/shift are taken over; the running statistics have no counterpart and are dropped.
"""

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models import ResNet18_Weights, ResNet50_Weights
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork

from models.bands import RGB, InputBands, widen_first_conv
from models.imagenet import imagenet_state_dict
from models.interfaces import Backbone

TOP_CHANNELS = 256
FPN_CHANNELS = 128
NORM_GROUPS = 32
_LEVELS = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}
_RESNETS = {
    18: (torchvision.models.resnet18, ResNet18_Weights.IMAGENET1K_V1, (64, 128, 256, 512)),
    50: (torchvision.models.resnet50, ResNet50_Weights.IMAGENET1K_V1, (256, 512, 1024, 2048)),
}


def group_norm(channels: int) -> nn.GroupNorm:
    """The backbone's normalisation layer (see the module docstring for why not BatchNorm)."""
    return nn.GroupNorm(NORM_GROUPS, channels)


def without_running_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BatchNorm ResNet state dict for the GroupNorm body: BatchNorm's weight/bias become GroupNorm's
    scale/shift (same names); its running statistics and batch counters are dropped."""
    drop = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state.items() if not k.endswith(drop)}


class FPNResNet(Backbone):
    """ResNet-18/50 + FPN segmentation backbone.

    ``encode(x)`` -> skips [C2, C3, C4], top (B,256,H/32,W/32) (ceil); ``decode`` -> logits (B,n_class,H,W);
    ``context(x)`` -> what FCtL's correlation blocks read from a context (B,128,H/32,W/32), see
    ``context_features``.
    Inputs are [0,1] bands (``models.bands``); they are normalised band by band inside ``encode`` (ImageNet's
    mean/std for R, G, B, because the torchvision ResNet weights expect that; FCN8, faithful to the
    released model, does not normalise).
    head=False builds only ``body`` and ``top``; a frozen context/global encoder needs the head too.
    """

    top_channels = TOP_CHANNELS
    context_channels = FPN_CHANNELS
    context_needs_head = True

    def __init__(self, depth: int, n_class: int, head: bool = True, pretrained: bool = False,
                 bands: InputBands = RGB) -> None:
        super().__init__()
        constructor, weights, channels = _RESNETS[depth]
        self.name = f"fpn_resnet{depth}"
        self.n_class = n_class
        self.has_head = head
        self.bands = bands
        resnet = constructor(weights=None, norm_layer=group_norm)
        if pretrained:
            resnet.load_state_dict(without_running_stats(imagenet_state_dict(weights)))
        resnet.conv1 = widen_first_conv(resnet.conv1, bands.count)
        self.body = IntermediateLayerGetter(resnet, return_layers=_LEVELS)
        self.top = nn.Sequential(
            nn.Conv2d(channels[3], TOP_CHANNELS, kernel_size=1, bias=False),
            group_norm(TOP_CHANNELS),
            nn.ReLU(inplace=True),
        )
        if not head:
            return
        self.fpn = FeaturePyramidNetwork([channels[0], channels[1], channels[2], TOP_CHANNELS], FPN_CHANNELS)
        self.head = nn.Sequential(
            nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, kernel_size=3, padding=1, bias=False),
            group_norm(FPN_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(FPN_CHANNELS, n_class, kernel_size=1),
        )

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (B,bands,H,W) in [0,1] -> ([C2, C3, C4], top)."""
        # Constants made on the input's device (not buffers: a model built on the meta device and
        # loaded from a file has no way to restore non-persistent buffers).
        levels = self.body(self.bands.normalise(x))
        return [levels["c2"], levels["c3"], levels["c4"]], self.top(levels["c5"])

    def head_features(self, skips: list[torch.Tensor], top: torch.Tensor) -> torch.Tensor:
        """Skips [C2, C3, C4] and top -> the map the classifier reads (B,128,H/4,W/4): the pyramid levels
        summed at P2 resolution, then 3x3 conv, GroupNorm, ReLU."""
        pyramid = self.fpn(OrderedDict(p2=skips[0], p3=skips[1], p4=skips[2], p5=top))
        merged = pyramid["p2"]
        for key in ("p3", "p4", "p5"):
            merged = merged + F.interpolate(pyramid[key], size=merged.shape[-2:], mode="bilinear",
                                            align_corners=False)
        return self.head[:3](merged)

    def decode(self, skips: list[torch.Tensor], top: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Skips [C2, C3, C4] and (possibly context-fused) top -> logits (B,n_class,*size)."""
        logits = self.head[3](self.head_features(skips, top))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def context_features(self, skips: list[torch.Tensor], top: torch.Tensor) -> torch.Tensor:
        """The context that FCtL's correlation blocks read: ``head_features`` averaged over the cells of
        the top grid, (B,128,h_top,w_top).

        Not ``top``: in these networks the top level hardly carries what a context should tell, while
        the head features, which the classifier reads, do (``python -m tools.context_probe`` measures
        both on the demo's data; docs/demo.md).
        """
        return F.adaptive_avg_pool2d(self.head_features(skips, top), top.shape[-2:])
