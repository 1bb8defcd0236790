"""FCtLNet: one backbone plus the context modules of the chosen mode.

What each mode computes is described in ``models.modes`` (the released system's numbering):
  0 global  - the backbone alone, on the whole image resized;
  1 local   - the backbone alone, on patches ("pre");
  2 medium  - top = top + big(top, context of the medium window through the SAME backbone, with gradients);
  3 self + large - top = top + fusion(local(top, top), large(top, global context));
  4 all     - top = top + fusion(local(top, top), medium(top, context of the medium window through a
              frozen context encoder), large(top, global context)).
  5 windows - top = top + fusion(big(top, medium window through frozen encoder #1), large(top, large
              window through frozen encoder #2), local(top, top)): the Inria release's full model.
A "context" is what the backbone's ``context`` gives: pool5 for FCN8 (as released), the head features
pooled to the top grid for the FPNs (see FPNResNet.context_features for why not their top). The global
context comes from a frozen ``global_encoder`` via ``encode_global``, once per image. Frozen encoders
hold only what ``context`` needs (FCN8: VGG features only), never require grad and always stay in eval
mode; they get their weights from their own checkpoints (see models/checkpoint.py).
"""

import torch
import torch.nn as nn

from models.backbones import build_backbone, build_context_encoder
from models.bands import RGB, InputBands
from models.correlation import CORRELATIONS, FCtLCorrelation
from models.fusion import AdaptiveFusion
from models.inputs import NO_INPUTS, NetworkInputs
from models.modes import ENCODERS, Mode, mode_spec

FROZEN = tuple(dict.fromkeys(encoder.attribute for encoder in ENCODERS))


class FCtLNet(nn.Module):
    """The network for one mode; see the module docstring for what each mode computes.

    ``correlation``: "centred" (the DeepGlobe release's blocks) or "plain" (the Inria release's), for
    every correlation block. ``class_table``: a JSON-able description of the classes (names, colours),
    recorded in checkpoints so that a file is only used with the classes it was trained for.
    ``bands``: what the network reads per pixel (``models.bands``; the backbone and every frozen encoder
    alike), recorded in checkpoints when not RGB.
    """

    def __init__(self, mode: int, backbone: str = "fcn8_vgg16", n_class: int = 7, pretrained: bool = False,
                 gamma_init: float = 0.0, correlation: str = "centred", class_table: dict | None = None,
                 bands: InputBands = RGB) -> None:
        super().__init__()
        if correlation not in CORRELATIONS:
            raise ValueError(f"correlation must be one of {CORRELATIONS}, got {correlation!r}")
        spec = mode_spec(mode)
        self._spec = spec
        self._backbone_name = backbone
        self.correlation = correlation
        self.class_table = class_table
        self.n_class = n_class
        self.bands = bands
        self.backbone = build_backbone(backbone, n_class, head=True, pretrained=pretrained, bands=bands)
        channels, context = self.backbone.top_channels, self.backbone.context_channels
        centred = correlation == "centred"
        # Attribute names are the released ones: checkpoints are matched by them.
        for name in spec.blocks:
            if name != "fusion":
                sees = channels if name == "local" else context
                setattr(self, name, FCtLCorrelation(channels, sees, gamma_init, centred=centred))
        if spec.fused_branches:
            self.fusion = AdaptiveFusion(channels, spec.fused_branches)
        for encoder in spec.frozen:
            setattr(self, encoder.attribute, self._frozen(backbone, n_class, bands))

    @staticmethod
    def _frozen(backbone: str, n_class: int, bands: InputBands) -> nn.Module:
        encoder = build_context_encoder(backbone, n_class, bands)
        encoder.requires_grad_(False)
        return encoder.eval()

    @property
    def spec(self) -> Mode:
        """What this model's mode needs (see models.modes)."""
        return self._spec

    @property
    def mode(self) -> int:
        return self._spec.number

    @property
    def backbone_name(self) -> str:
        return self._backbone_name

    def frozen_encoders(self) -> list[nn.Module]:
        """The frozen context/global encoders this mode has (possibly none)."""
        return [getattr(self, name) for name in FROZEN if hasattr(self, name)]

    def train(self, mode: bool = True) -> "FCtLNet":
        """Switch the trainable part; frozen encoders stay in eval (their BatchNorm/Dropout never train)."""
        super().train(mode)
        for encoder in self.frozen_encoders():
            encoder.eval()
        return self

    def encode_global(self, global_image: torch.Tensor) -> torch.Tensor:
        """global_image (1,bands,g,g) in [0,1] -> context of the frozen global encoder (1,C',hg,wg), without grad."""
        if not hasattr(self, "global_encoder"):
            raise RuntimeError(f"mode {self.mode} has no global encoder")
        with torch.no_grad():
            return self.global_encoder.context(global_image)

    def forward(self, x: torch.Tensor, inputs: NetworkInputs = NO_INPUTS) -> torch.Tensor:
        """x (B,3,p,p) patches in [0,1] and what this mode reads of ``inputs`` (``spec.extra_inputs``; see
        ``models.inputs``) -> logits (B,n_class,p,p). ValueError when a field the mode reads is missing."""
        inputs.check(self._spec)
        medium, global_context, large_window = inputs.medium, inputs.global_context, inputs.large_window
        spec = self._spec
        if spec.shared_medium:
            # Patches and contexts go through the shared backbone as ONE batch: one pass instead of two.
            # Neither backbone normalises across the batch (FCN8 has no normalisation, the FPN-ResNets
            # use GroupNorm), so this equals two separate passes.
            skips, tops = self.backbone.encode(torch.cat([x, medium]))
            context = self.backbone.context_features([s[len(x):] for s in skips], tops[len(x):])
            skips, top = [s[: len(x)] for s in skips], tops[: len(x)]
            top = top + self.big(top, context)
        else:
            skips, top = self.backbone.encode(x)
        branches: dict[str, torch.Tensor] = {}
        if spec.self_correlation:
            branches["local"] = self.local(top, top)
        if spec.frozen_medium:
            with torch.no_grad():
                medium_context = self.context_encoder.context(medium)
            branches["medium"] = self.medium(top, medium_context)
        if spec.two_windows:
            with torch.no_grad():
                medium_context = self.context_encoder.context(medium)
                large_context = self.context2_encoder.context(large_window)
            branches["big"] = self.big(top, medium_context)
            branches["large"] = self.large(top, large_context)
        if spec.large:
            branches["large"] = self.large(top, global_context)
        if branches:
            top = top + self.fusion([branches[name] for name in spec.fusion_order])
        return self.backbone.decode(skips, top, (x.shape[2], x.shape[3]))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the frozen encoders (what a checkpoint of this model holds)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(tuple(f"{n}." for n in FROZEN))}

