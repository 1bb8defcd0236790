"""What each ``--mode`` needs, described once as data.

The released system numbers its five networks 0-4. Every other module asks the ``Mode`` of a number
(``mode_spec``) or the model (``FCtLNet.spec``) instead of comparing numbers, so a new variant is one
more entry in ``MODES`` plus whatever new block it computes in ``FCtLNet``.

A mode is described by
- how the patches are seen: the whole image resized (``whole_image``: trains and predicts on the global
  view) or the overlapping patch grid;
- which correlation blocks add to the backbone's top: ``shared_medium`` (mode 2's ``big`` block: the
  medium window through the model's own, training backbone, added directly), ``self_correlation``
  (``local``), ``frozen_medium`` (``medium``, reading a frozen context encoder) and ``large`` (reading
  the frozen global encoder); the last three are fused by one adaptive fusion;
- ``two_windows`` (mode 5, the Inria release's full model): ``big`` reads the medium window (x
  ``context``) through one frozen encoder, ``large`` the large window (x ``context2``) through
  another, ``local`` the patch itself; the three are fused in the Inria release's order (medium,
  large, self: ``fusion_order``). ``big`` keeps mode 2's name because that release starts its full
  model from all of a mode-2 model, medium branch included, matching tensors by name;
- which frozen encoders it holds and from which checkpoint each takes its weights (``frozen``).
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.errors import ConfigError


@dataclass(frozen=True)
class FrozenEncoder:
    """A frozen encoder of a mode: the model attribute, the checkpoint setting that fills it, and the
    stage that trains such a checkpoint."""

    attribute: str  # "context_encoder" | "global_encoder"
    setting: str  # the create_model keyword (and command-line option) of its checkpoint
    source_mode: int  # the mode whose trained model provides the encoder
    role: str  # what it gives, for messages
    example: str  # the released file of that stage
    stage_script: str  # the shell script that trains that stage


CONTEXT_ENCODER = FrozenEncoder("context_encoder", "c_path", 2, "medium", "medium.epoch.pth", "train_medium.sh")
GLOBAL_ENCODER = FrozenEncoder("global_encoder", "glo_path", 0, "global", "global.epoch.pth", "train_global.sh")
# Mode 5's encoders: the VGG of the x2 and of the x3 mode-2 models (the Inria release's B10 and B15).
WINDOW_ENCODER = FrozenEncoder("context_encoder", "c_path", 2, "medium-window", "B10.epoch.pth",
                               "train_inria_B10.sh")
WINDOW2_ENCODER = FrozenEncoder("context2_encoder", "c2_path", 2, "large-window", "B15.epoch.pth",
                                "train_inria_B15.sh")


@dataclass(frozen=True)
class Mode:
    number: int
    name: str  # the released stage name: global, pre, medium, ...
    summary: str  # one line for --help
    whole_image: bool = False
    shared_medium: bool = False
    self_correlation: bool = False
    frozen_medium: bool = False
    large: bool = False
    two_windows: bool = False
    example: str | None = None  # the DeepGlobe release's checkpoint of this mode, if there is one
    inria_example: str | None = None  # the Inria release's checkpoint of this mode, if there is one

    @property
    def extra_inputs(self) -> tuple[str, ...]:
        """The ``models.inputs.NetworkInputs`` fields a forward pass of this mode reads besides the
        patches: ``medium`` (the medium window, x ``context``), ``global_context`` (from the frozen
        global encoder) and ``large_window`` (the large window, x ``context2``)."""
        used = (("medium", self.shared_medium or self.frozen_medium or self.two_windows),
                ("global_context", self.large), ("large_window", self.two_windows))
        return tuple(name for name, present in used if present)

    @property
    def fusion_order(self) -> tuple[str, ...]:
        """The correlation blocks the adaptive fusion combines, in its branch order (``in_1`` first):
        the DeepGlobe release's local, medium, large; the Inria release's medium (``big``), large, self."""
        if self.two_windows:
            return ("big", "large", "local")
        used = (("local", self.self_correlation), ("medium", self.frozen_medium), ("large", self.large))
        return tuple(name for name, present in used if present)

    @property
    def fused_branches(self) -> int:
        """Number of correlation branches the adaptive fusion combines (0: no fusion)."""
        return len(self.fusion_order)

    @property
    def blocks(self) -> tuple[str, ...]:
        """The FCtLNet attributes of this mode's context modules (the released names), backbone aside."""
        used = (("big", self.shared_medium or self.two_windows), ("local", self.self_correlation),
                ("medium", self.frozen_medium), ("large", self.large or self.two_windows),
                ("fusion", self.fused_branches > 0))
        return tuple(name for name, present in used if present)

    @property
    def frozen(self) -> tuple[FrozenEncoder, ...]:
        """The frozen encoders of this mode, in the order their checkpoints are loaded."""
        if self.two_windows:
            return (WINDOW_ENCODER, WINDOW2_ENCODER)
        return tuple(e for e, used in ((CONTEXT_ENCODER, self.frozen_medium), (GLOBAL_ENCODER, self.large)) if used)

    def describe_file(self) -> str:
        """What a checkpoint of this mode is called in messages, e.g. 'a mode-4 (all) checkpoint'."""
        return f"a mode-{self.number} ({self.name}) checkpoint"

    def describe_expected_file(self) -> str:
        """``describe_file`` plus the released examples, e.g. '... checkpoint such as all.epoch.pth'."""
        examples = [f"{self.example} (DeepGlobe)" if self.inria_example else self.example,
                    self.inria_example and f"{self.inria_example} (Inria)"]
        examples = [e for e in examples if e]
        return self.describe_file() + (f" such as {' or '.join(examples)}" if examples else "")


MODES: dict[int, Mode] = {m.number: m for m in (
    Mode(0, "global", "global: the whole image resized to size_g", whole_image=True, example="global.epoch.pth"),
    Mode(1, "pre", "local: patches only (the 'pre' model)"),
    Mode(2, "medium", "medium: patches + medium-context correlation (shared encoder; the Inria release's B10/B15)",
         shared_medium=True, example="medium.epoch.pth", inria_example="B10.epoch.pth"),
    Mode(3, "self+large", "self + large: local and global correlations, two-branch fusion", self_correlation=True,
         large=True),
    Mode(4, "all", "all: local, medium and large correlations, three-branch fusion", self_correlation=True,
         frozen_medium=True, large=True, example="all.epoch.pth"),
    Mode(5, "windows", "windows: self, medium-window and large-window correlations, three-branch fusion (the "
         "Inria release's full model)", self_correlation=True, two_windows=True, inria_example="all.epoch.pth"),
)}
ENCODERS = (CONTEXT_ENCODER, GLOBAL_ENCODER, WINDOW_ENCODER, WINDOW2_ENCODER)
SETTINGS = tuple(dict.fromkeys(e.setting for e in ENCODERS))  # c_path, glo_path, c2_path


def mode_spec(mode: int) -> Mode:
    """The description of mode number ``mode``; ConfigError for an unknown number."""
    try:
        return MODES[mode]
    except (KeyError, TypeError):
        choices = ", ".join(f"{m.number} ({m.name})" for m in MODES.values())
        raise ConfigError(f"unknown `mode` {mode}; choose {choices}") from None
