"""Checkpoint policy of a training run: which files are written, when, and what a resume reads.

Files, all ``<model_path>/<task_name>.<tag>.pth``:
- ``epoch<E>``: the weights after epoch E, kept on the released schedule (``keep_epoch``: every 5
  epochs, and every epoch from epoch 34 on in the DeepGlobe release; the Inria release keeps only
  every 5th);
- ``epoch``: the weights after the last epoch (what the next stage reads);
- ``best``: the weights of the best validation mIoU so far;
- ``last``: the full training state after the last completed epoch (weights, optimizer, schedule
  position, RNG), written last of an epoch's files, so ``--resume`` continues exactly.
Every file is written atomically (a kill leaves the previous complete file); temporaries that a
SIGKILL left behind are removed by ``remove_stale``. Only the main process writes (``enabled``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from glob import escape as glob_escape
from typing import Any

import torch

from models.checkpoint import atomic_save, read_checkpoint, save_weights
from utils.errors import CheckpointError
from utils.files import ensure_free_space, remove_stale_temporaries

# Settings a resumed run must share with the run it continues: they fix the number of steps per epoch
# and the poly schedule built on it (batch_size, max_images, start_epoch), what the model learns from
# (size_p, size_g, context, context2), and the image order and augmentation streams (seed). Everything
# else may change: epochs (at least those done), lr and weight_decay (a lower lr after a stop), sub_batch_size,
# num_workers, device, amp and amp_dtype, validation.
FIXED_ON_RESUME = ("batch_size", "max_images", "size_p", "size_g", "context", "context2", "seed", "start_epoch")


def keep_epoch(epoch: int, each_from: int = 34) -> bool:
    """The released schedule for ``epoch<E>`` files (1-based E): every 5 epochs, and every epoch from
    ``each_from`` (34 in the DeepGlobe release; 0 = never, the Inria release)."""
    return epoch % 5 == 0 or 0 < each_from <= epoch


class CheckpointPolicy:
    """Where one run's checkpoints go and which are kept (see the module doc)."""

    def __init__(self, model_path: str, task_name: str, *, enabled: bool = True,
                 keep: Callable[[int], bool] = keep_epoch,
                 save: Callable[[torch.nn.Module, str], None] = save_weights) -> None:
        """``save(model, path)`` writes a weight file (``models.checkpoint.save_weights``; a refinement run
        passes ``models.refinement.save_refinement``)."""
        self.model_path = model_path
        self.save = save
        self.task_name = task_name
        self.enabled = enabled
        self.keep = keep
        self.saved_epoch: int | None = None  # epoch held by the ``last`` file (None: none written yet)

    def path(self, tag: str) -> str:
        """``<model_path>/<task_name>.<tag>.pth`` (tags: epoch<E>, epoch, best, last)."""
        return os.path.join(self.model_path, f"{self.task_name}.{tag}.pth")

    def check_space(self, model: torch.nn.Module) -> None:
        """Before the first epoch: the disk must hold an epoch's files (weights, and the training
        state with Adam's two moments per weight) with room for a temporary copy during a write."""
        if not self.enabled:
            return
        os.makedirs(self.model_path, exist_ok=True)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        ensure_free_space(self.model_path, 5 * weight_bytes / 2**20, "model_path", "this model's checkpoints")

    def remove_stale(self) -> list[str]:
        """Delete temporaries of interrupted writes of this task; returns their paths."""
        if not self.enabled:
            return []
        return remove_stale_temporaries(self.model_path, f"{glob_escape(self.task_name)}.*.pth")

    def save_best(self, model: torch.nn.Module) -> None:
        if self.enabled:
            self.save(model, self.path("best"))

    def end_of_epoch(self, model: torch.nn.Module, epoch: int, epochs: int, state: dict[str, Any]) -> None:
        """After epoch ``epoch`` (1-based) of ``epochs``: the kept weight files, then the training state."""
        if self.enabled:
            if self.keep(epoch):
                self.save(model, self.path(f"epoch{epoch}"))
            if epoch == epochs:
                self.save(model, self.path("epoch"))
            atomic_save(state, self.path("last"))
        self.saved_epoch = epoch

    def kept(self) -> str:
        """Where a stopped run can go on from, for messages (names only files that exist)."""
        if self.saved_epoch is None:
            return "no epoch was completed, so nothing was saved: start again without `resume`"
        return f"{self.path('last')} holds the end of epoch {self.saved_epoch}: continue with `resume`"

    def final_weights(self) -> str | None:
        """The ``epoch`` file if this run has written or found it, else None."""
        path = self.path("epoch")
        return path if os.path.exists(path) else None

    def read_last(self, mode: int, backbone: str, settings: dict | None = None,
                  epochs: int | None = None) -> tuple[dict, dict, dict]:
        """(weights, meta, extra) of the ``last`` file, checked to be a training state of this model,
        of the same ``FIXED_ON_RESUME`` settings (where both record them) and of at most ``epochs``."""
        path = self.path("last")
        if not os.path.exists(path):
            raise CheckpointError(f"`resume`: {path} does not exist; start without `resume` or check "
                                  f"`model_path`/`task_name`")
        weights, meta, extra = read_checkpoint(path, with_extra=True)
        if meta["kind"] != "training-state":
            raise CheckpointError(f"`resume`: {path} holds only weights, not a training state (optimizer, epoch); "
                                  f"start without `resume` and pass it as `pre_path` instead")
        if extra.get("mode") != mode or extra.get("backbone") != backbone:
            raise CheckpointError(f"`resume`: {path} is a mode-{extra.get('mode')} {extra.get('backbone')} run, not "
                                  f"mode {mode} {backbone}; use another `task_name`")
        recorded = extra.get("settings") or {}
        for name in FIXED_ON_RESUME:
            if name in recorded and settings and name in settings and recorded[name] != settings[name]:
                raise CheckpointError(f"`resume`: {path} was trained with `{name}` {recorded[name]}, this run asks "
                                      f"for {settings[name]}; resume with the same `{name}` (it fixes the steps, "
                                      f"schedule and data of the run) or start a new `task_name`")
        if epochs is not None and extra["epoch"] > epochs:
            raise CheckpointError(f"`resume`: {path} holds {extra['epoch']} epochs, more than the `epochs` {epochs} "
                                  f"asked for; pass `epochs` {extra['epoch']} or more")
        self.saved_epoch = extra["epoch"]
        return weights, meta, extra
