"""Contextual refinement of the stitched prediction (our design, after the FCtL paper's CSRN).

The FCtL paper names a "contextual semantics refinement network" that associates the local
segmentation result with its contextual semantics to reduce boundary artifacts and refine mask
contours; its authors never published it. ``RefinementNet`` is this project's own network for that
role, not the authors' (docs/refinement.md has the design and the measurements).

It reads, for a window of the full-size canvas:
- the image (3 channels, in [0, 1]);
- the merged prediction of the base model: the MEAN logits of the patches (and views) that cover each
  pixel, read as softmax probabilities (C channels);
- optionally the contextual semantics: the class probabilities of a global (mode-0) model for the
  same ground, its prediction of the resized whole image upsampled to the window (C channels);
and returns refined logits: the mean logits plus a correction. The correction's last layer starts at
zero, so an untrained refinement returns the base prediction unchanged.

The network is fully convolutional and its output at a pixel depends only on inputs within ``halo``
pixels of it (its receptive radius), which is what lets ``pipeline.refine`` run it window by window
over a canvas of any size.

A refinement checkpoint records what it refines (``RefinementRecord``: the base model's mode,
backbone, classes and correlation, and whether it reads the global context); it is refused for any
other base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.checkpoint import META_KEY, atomic_save, load_file, table_difference
from utils.errors import CheckpointError

FORMAT_VERSION = 1
KIND = "refinement"
CONTEXTS = ("global", "none")  # what a refinement reads besides the image and the merged prediction
_PREFIX = "refiner."


@dataclass(frozen=True)
class RefinementRecord:
    """What a refinement network refines: the base model (mode, backbone, classes, correlation) and the
    context it reads (``global``: a mode-0 model's probabilities; ``none``)."""

    mode: int
    backbone: str
    n_class: int
    correlation: str
    classes: dict | None
    context: str

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {self.context!r}")

    def describe(self) -> str:
        """E.g. 'a mode-4 fcn8_vgg16 model of 7 classes (centred correlation), with the global context'."""
        context = "with the global context" if self.context == "global" else "without a global context"
        return (f"a mode-{self.mode} {self.backbone} model of {self.n_class} classes ({self.correlation} "
                f"correlation), {context}")

    def differences(self, other: RefinementRecord) -> list[str]:
        """The fields in which ``other`` differs from this record, as 'name: mine vs theirs'."""
        out = []
        for name, mine in asdict(self).items():
            theirs = getattr(other, name)
            if name == "classes":  # the classes themselves; the table's scoring rules do not change a network
                if _entries(mine) != _entries(theirs):
                    out.append(f"another class table ({_class_difference(mine, theirs)})")
            elif mine != theirs:
                out.append(f"{name} {mine}, not {theirs}")
        return out


def _entries(table: dict | None) -> list | None:
    return None if not table else table.get("classes")


def _class_difference(recorded: dict | None, ours: dict | None) -> str:
    if not recorded or not ours:
        return "one of them records none"
    return table_difference(recorded, ours)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))) with two 3 x 3 convolutions of dilation ``dilation``.

    Shapes: (B, width, H, W) -> (B, width, H, W). Receptive radius: 2 x ``dilation``.
    """

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True)).add_(x)


class RefinementNet(nn.Module):
    """Refined logits from the image, the merged prediction and (optionally) the global context.

    ``forward(image, logits, context)``: image (B, 3, H, W) float in [0, 1]; logits (B, C, H, W) the
    base model's mean logits; context (B, C, H, W) probabilities, or None when ``record.context`` is
    ``none``. Returns (B, C, H, W) float: ``logits`` plus the correction (computed in the input dtype;
    the sum is float32 when the logits are).

    Layers: a 3 x 3 stem to ``width`` channels, one ``ResidualBlock`` per entry of ``dilations``, a
    1 x 1 head to C channels initialised to zero. ``halo`` is the receptive radius: 1 + 2 x the sum
    of the dilations (31 for the defaults).
    """

    def __init__(self, record: RefinementRecord, width: int = 32, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.record = record
        self.width = width
        self.dilations = tuple(int(d) for d in dilations)
        self.n_class = record.n_class
        inputs = 3 + record.n_class + (record.n_class if record.context == "global" else 0)
        self.stem = nn.Conv2d(inputs, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(width, d) for d in self.dilations))
        self.head = nn.Conv2d(width, record.n_class, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def halo(self) -> int:
        """Pixels beyond a window's edge that its outputs depend on (the receptive radius)."""
        return 1 + 2 * sum(self.dilations)

    @property
    def reads_context(self) -> bool:
        return self.record.context == "global"

    def forward(self, image: torch.Tensor, logits: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if (context is not None) != self.reads_context:
            raise ValueError(f"this refinement {'reads' if self.reads_context else 'does not read'} a global context, "
                             f"but it was {'not ' if context is None else ''}given one")
        parts = [image - 0.5, torch.softmax(logits.float(), dim=1).to(image.dtype)]
        if context is not None:
            parts.append(context.to(image.dtype))
        features = self.blocks(F.relu(self.stem(torch.cat(parts, dim=1)), inplace=True))
        return logits + self.head(F.relu(features, inplace=True))


def export_refinement(net: RefinementNet) -> dict[str, Any]:
    """What ``save_refinement`` writes: the weights under ``refiner.<name>`` and the ``_fctl`` record."""
    state: dict[str, Any] = {_PREFIX + k: v for k, v in net.state_dict().items()}
    state[META_KEY] = {"kind": KIND, "refines": asdict(net.record), "width": net.width,
                       "dilations": list(net.dilations), "format_version": FORMAT_VERSION}
    return state


def save_refinement(net: RefinementNet, path: str) -> None:
    """Write the refinement's weights and record atomically (CheckpointError when it cannot)."""
    atomic_save(export_refinement(net), path)


def is_refinement(obj: Any) -> bool:
    """Whether a loaded checkpoint object (weights or training state) is a refinement's."""
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    meta = state.get(META_KEY) if isinstance(state, dict) else None
    return isinstance(meta, dict) and meta.get("kind") == KIND


def read_refinement(path: str, with_extra: bool = False) -> RefinementNet | tuple[RefinementNet, dict]:
    """The refinement network stored in ``path`` (weights, or a training state's ``model``), on the CPU;
    with ``with_extra`` also the training state's other entries (empty for a weight file).
    CheckpointError names the file for anything that is not a readable refinement checkpoint."""
    obj, _ = load_file(path)
    if not is_refinement(obj):
        raise CheckpointError(f"{path} is not a refinement checkpoint (those are written by training with `refine`, "
                              f"e.g. train_refine.sh); pass model weights as `pre_path`, a refinement as `refine_path`")
    state = obj.get("model", obj)
    meta = state[META_KEY]
    try:
        record = RefinementRecord(**meta["refines"])
        net = RefinementNet(record, width=int(meta["width"]), dilations=tuple(meta["dilations"]))
        net.load_state_dict({k[len(_PREFIX):]: v for k, v in state.items() if k != META_KEY})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refinement checkpoint {path} is damaged or of another version ({first}); "
                              f"train it again or pick another file") from None
    if with_extra:
        extra = {k: v for k, v in obj.items() if k != "model"} if "model" in obj else {}
        return net, extra
    return net


def check_refines(net: RefinementNet, base: RefinementRecord, path: str) -> None:
    """Refuse a refinement trained for another base model or context, naming the file and what differs."""
    differences = net.record.differences(base)
    hint = " with the global model it reads as `glo_path`" if net.record.context == "global" != base.context else ""
    if differences:
        raise CheckpointError(f"refinement {path} refines {net.record.describe()}; this run's base is "
                              f"{base.describe()} ({', '.join(differences)}): give the refinement trained for this "
                              f"base{hint}, or train one with `refine`")
