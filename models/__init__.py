"""FCtL networks: backbones, correlation and fusion blocks, the mode-dispatching FCtLNet, checkpoint I/O."""

from models.backbones import BACKBONES, build_backbone
from models.checkpoint import (
    LoadReport,
    atomic_save,
    export_weights,
    load_state_into,
    load_weights,
    read_checkpoint,
    released_name,
    save_weights,
)
from models.correlation import FCtLCorrelation
from models.fctl import FCtLNet
from models.fusion import AdaptiveFusion
from models.modes import MODES, Mode, mode_spec
from models.setup import create_model

__all__ = [
    "BACKBONES",
    "AdaptiveFusion",
    "FCtLCorrelation",
    "FCtLNet",
    "LoadReport",
    "MODES",
    "Mode",
    "atomic_save",
    "build_backbone",
    "create_model",
    "export_weights",
    "load_state_into",
    "load_weights",
    "mode_spec",
    "read_checkpoint",
    "released_name",
    "save_weights",
]
