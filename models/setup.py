"""Building a ready-to-run FCtLNet from the choices of a run (mode, backbone, checkpoint paths)."""

import contextlib
import logging

import torch

from models.bands import RGB, InputBands
from models.checkpoint import load_weights, read_checkpoint
from models.fctl import FCtLNet
from models.modes import SETTINGS, mode_spec
from utils.errors import CheckpointError

log = logging.getLogger(__name__)


def create_model(
    mode: int,
    backbone: str,
    *,
    pre_path: str | None = None,
    c_path: str | None = None,
    glo_path: str | None = None,
    c2_path: str | None = None,
    training: bool = False,
    pretrained: bool = False,
    n_class: int = 7,
    gamma_init: float = 0.0,
    correlation: str = "centred",
    class_table: dict | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    pre_setting: str = "pre_path",
    bands: InputBands | None = RGB,
) -> FCtLNet:
    """Build the mode's network and load its checkpoints; returns it in train or eval mode.

    pre_path: weights of the model itself. While training, groups the file lacks start fresh (e.g. a
    mode-1 "pre" model starting mode 2 or 4); otherwise the file must be complete. ImageNet weights are
    fetched only when ``pretrained`` and no pre_path is given (the file would overwrite them).
    c_path (modes 4, 5): a model whose encoder becomes the frozen context encoder (e.g. medium.epoch.pth;
    in mode 5 the x2 mode-2 model, e.g. the Inria release's B10.epoch.pth).
    glo_path (modes 3, 4): a model whose encoder becomes the frozen global encoder (e.g. global.epoch.pth).
    c2_path (mode 5): the x3 mode-2 model (e.g. B15.epoch.pth) whose encoder reads the large windows.
    Every load is logged as one line; problems raise CheckpointError. For inference the loaded tensors
    are the memory-mapped file tensors themselves (no second copy of the weights in RAM).
    gamma_init: start of the correlation gates; it matters only for context modules pre_path lacks.
    correlation, class_table: see FCtLNet; files recording (or, for released files, implying) other
    ones are refused.
    memory_format: how the model's weights are stored (``models.backbones.memory_format_for``); for
    inference the file tensors are converted as they are loaded (see ``load_weights``).
    pre_setting: the setting that named ``pre_path``, for messages (a refinement's global model comes
    from `glo_path`).
    bands: what the network reads per pixel (``models.bands``); a file of another band count is refused,
    and the model normalises with the statistics its file records. None: what ``pre_path`` records (RGB
    for a file that records nothing, or without ``pre_path``), for runs that predict with a file.
    """
    if bands is None:
        bands = RGB if pre_path is None else InputBands.from_record(read_checkpoint(pre_path)[1].get("bands"))
    # For inference with every part coming from a file, build on the meta device: no memory is spent
    # on random initial weights, and the loads below make the memory-mapped file tensors the model's.
    spec = mode_spec(mode)
    paths = {"c_path": c_path, "glo_path": glo_path, "c2_path": c2_path}
    complete = not training and pre_path is not None and all(paths[e.setting] is not None for e in spec.frozen)
    with torch.device("meta") if complete else contextlib.nullcontext():
        model = FCtLNet(mode, backbone, n_class=n_class, pretrained=pretrained and pre_path is None,
                        gamma_init=gamma_init, correlation=correlation, class_table=class_table, bands=bands)
    if pre_path is not None:
        log.info(load_weights(model, pre_path, what=f"`{pre_setting}`", allow_missing=training, assign=not training,
                              memory_format=memory_format).summary())
    for name in SETTINGS:
        path, setting = paths[name], f"`{name}`"
        encoder = next((e for e in spec.frozen if e.setting == name), None)
        if encoder is None:
            if path is not None:
                log.warning("%s is not used in mode %d; ignored", setting, mode)
            continue
        if path is None:
            log.warning("mode %d without %s: the frozen %s keeps random weights", mode, setting, encoder.attribute)
            continue
        log.info(load_weights(getattr(model, encoder.attribute), path, what=setting, allow_missing=False,
                              assign=not training, source_mode=encoder.source_mode,
                              memory_format=memory_format).summary())
    if complete:
        leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if leftover:
            raise CheckpointError(f"the checkpoints left {len(leftover)} tensors unset (e.g. {leftover[0]}); "
                                  f"pass complete files for `pre_path`/`c_path`/`glo_path`/`c2_path`")
    return model.to(memory_format=memory_format).train(training)
