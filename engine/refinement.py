"""Training the refinement stage: a ``models.refinement.RefinementNet`` on top of a frozen base model.

One step takes a batch of whole images. For each image the frozen base model predicts the whole image
as at test time (patch grid, merge rule, no TTA) and gives its mean logits; the global (mode-0) model
gives the contextual semantics when the refinement reads them. From these, ``crops`` windows of
``crop`` x ``crop`` pixels are drawn at random places, each read with the network's ``halo`` around it
exactly as ``pipeline.refine`` reads a window at test time, turned by a random flip/rotation (image,
prediction, context and labels together), and the refinement's cross-entropy is taken on the window's
core. The windows fall anywhere on the patch grid, so they hold the seams and borders the refinement
must learn to mend. Their losses are back-propagated one by one (gradients accumulate) and the
optimizer steps once per batch, on the poly learning rate.

The run writes the same files as every stage (``engine.checkpoint_policy``: atomic, ``last`` written
last), holding refinement checkpoints (``models.refinement``), which record the base model they refine;
``resume`` continues exactly on the CPU. Validation scores the refined predictions of the validation
split (mIoU, Boundary IoU, seam accuracy) every ``val_every`` epochs and after the last; the best mIoU
is kept as ``best``. A non-finite loss or weight, out of memory and Ctrl-C stop the run with the file to
resume from, as in ``engine.training``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dataset.classes import DEEPGLOBE, ClassTable
from engine.checkpoint_policy import FIXED_ON_RESUME, CheckpointPolicy
from engine.evaluation import evaluate_dataset
from engine.training import TrainState, restore_training_state, run_epochs, save_if_best
from models.refinement import check_refines, export_refinement, read_refinement, save_refinement
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor
from pipeline.refine import ContextProbabilities, Refinement, refinement_inputs
from pipeline.sources import TensorSource
from utils.dihedral import VIEWS, to_view
from utils.distributed import DistInfo, all_reduce_sum
from utils.errors import CheckpointError, DataError, TrainingFault
from utils.labels import IGNORE_INDEX
from utils.learning_rate import poly_lr, set_lr
from utils.logging import get_logger, peak_memory_mb, progress
from utils.workers import iterate

log = get_logger("refine")



@dataclass(frozen=True)
class RefinementPlan:
    """How long and on what a refinement trains (``refine_crops`` windows of ``refine_crop`` px per image)."""

    epochs: int
    lr: float
    seed: int = 0
    val_every: int = 5
    crops: int = 8
    crop: int = 256
    start_epoch: int = 0  # epochs of the poly schedule already behind a fresh run (as ``TrainingPlan``)


@dataclass(frozen=True)
class RefinementWindow:
    """One training window: the network's inputs (image, mean logits, context or None; each (1, ., h, w))
    and the labels (1, h, w) int64, ``IGNORE_INDEX`` outside the core."""

    image: torch.Tensor
    logits: torch.Tensor
    context: torch.Tensor | None
    label: torch.Tensor


class RefinementTrainer:
    """One refinement training run: steps, epochs, validation, logs and checkpoints.

    base: the predictor of the frozen base model (its ``refinement`` None); refinement: the network to
    train and the global model it reads; model: what runs the refinement network's forward and backward
    (the network itself, or it wrapped in DistributedDataParallel); the rest as ``engine.training.Trainer``.
    """

    def __init__(self, refinement: Refinement, base: Predictor, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 cfg: PipelineConfig, plan: RefinementPlan, *, device: torch.device, model: torch.nn.Module | None = None,
                 dist_info: DistInfo | None = None, checkpoints: CheckpointPolicy | None = None, val_set=None,
                 val_workers: int = 0, writer=None, settings: dict | None = None,
                 classes: ClassTable = DEEPGLOBE) -> None:
        if base.refinement is not None:
            raise ValueError("the base predictor of a refinement run must not refine itself")
        self.refinement, self.base = refinement, base
        self.net = refinement.net
        self.model = model if model is not None else refinement.net
        self.context = None if refinement.context_net is None else Predictor(refinement.context_net, cfg)
        self.optimizer, self.loader, self.cfg, self.plan = optimizer, loader, cfg, plan
        self.device = device
        self.dist = dist_info or DistInfo()
        self.checkpoints = checkpoints
        self.val_set, self.val_workers, self.writer = val_set, val_workers, writer
        self.settings = dict(settings or {})
        self.classes = classes
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and cfg.amp_dtype == torch.float16)
        self.state = TrainState()
        self.skipped = 0

    # --- windows --------------------------------------------------------------------------------------
    def windows(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator) -> Iterator[RefinementWindow]:
        """The ``plan.crops`` training windows of one image (uint8 (3, H, W), labels (H, W)) on the device."""
        height, width = label.shape
        with torch.no_grad():
            mean = torch.cat([band for _, band in self.base.mean_logit_bands(image)], dim=1).clone()
            context = None
            if self.context is not None:
                small = self.context.global_logit_sum(TensorSource(image), [VIEWS[0]]).clone()
                context = ContextProbabilities(small, height, width)
        source, halo = TensorSource(image), self.refinement.halo
        rows, cols = min(self.plan.crop, height), min(self.plan.crop, width)
        for _ in range(self.plan.crops):
            top = int(torch.randint(0, height - rows + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - cols + 1, (1,), generator=generator))
            view = VIEWS[int(torch.randint(0, len(VIEWS), (1,), generator=generator))]
            y0, y1 = max(0, top - halo), min(height, top + rows + halo)
            x0, x1 = max(0, left - halo), min(width, left + cols + halo)
            with torch.no_grad():
                inputs = refinement_inputs(source, mean[:, y0:y1, x0:x1], context, y0, x0)
                target = torch.full((y1 - y0, x1 - x0), IGNORE_INDEX, dtype=torch.int64, device=label.device)
                target[top - y0:top - y0 + rows, left - x0:left - x0 + cols] = label[top:top + rows, left:left + cols]
            turned = [None if t is None else to_view(t, view).contiguous() for t in (*inputs, target[None])]
            yield RefinementWindow(turned[0], turned[1], turned[2], turned[3])

    # --- steps ----------------------------------------------------------------------------------------
    def _local(self, sync: bool):
        """Under DDP, every backward but the step's last runs in ``no_sync`` (see ``engine.training``)."""
        return contextlib.nullcontext() if sync or not self.dist.enabled else self.model.no_sync()

    def _kept(self) -> str:
        return "nothing is saved by this run" if self.checkpoints is None else self.checkpoints.kept()

    def train_step(self, windows: list[RefinementWindow]) -> float:
        """One optimizer step over ``windows`` (each loss divided by their number); returns the mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, window in enumerate(windows):
            with self._local(sync=i == len(windows) - 1):
                with self.cfg.autocast(self.device):
                    refined = self.model(window.image, window.logits, window.context)
                loss = F.cross_entropy(refined.float(), window.label, ignore_index=IGNORE_INDEX)
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingFault(f"loss became {value} at epoch {self.state.epoch + 1}, step "
                                        f"{self.state.iteration + 1}; stopped before the weights changed. "
                                        f"{self._kept()} (lower `lr` first)")
                total += value
                self.scaler.scale(loss / len(windows)).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.iteration += 1
        return total / len(windows)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training images; returns the mean step loss."""
        self.model.train()
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.plan.seed * 1_000_003 + epoch * 1009 + self.dist.rank)
        total = self.plan.epochs * len(self.loader)
        losses = []
        with iterate(self.loader) as batches:
            bar = progress(batches, total=len(self.loader), enabled=self.dist.is_main,
                           desc=f"refine epoch {epoch + 1}/{self.plan.epochs}", unit="batch")
            for batch in bar:
                self.skipped += batch["skipped"]
                lr = poly_lr(self.plan.lr, self.state.iteration, total)
                set_lr(self.optimizer, lr)
                windows = [w for img, lab in zip(batch["image"], batch["label"])
                           for w in self.windows(img.to(self.device), lab.to(self.device), generator)]
                if not windows:
                    if self.dist.enabled:
                        raise DataError("a whole batch was unreadable under torchrun; refinement runs need "
                                        "readable images on every process: fix the files named above")
                    continue
                losses.append(self.train_step(windows))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
                if self.writer is not None:
                    self.writer.add_scalar("refine/loss", losses[-1], self.state.iteration)
                    self.writer.add_scalar("refine/lr", lr, self.state.iteration)
        sums = all_reduce_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=self.device))
        if sums[1] == 0:
            raise DataError(f"no training image could be read in epoch {epoch + 1}: all were skipped as unreadable "
                            f"(`skip_bad_images`); fix or replace the files named in the warnings above")
        return float(sums[0] / sums[1])

    def validate(self) -> dict:
        """Scores of the refined predictions of the validation set (no TTA)."""
        predictor = Predictor(self.base.model, self.cfg, refinement=self.refinement)
        scores, _ = evaluate_dataset(predictor, self.val_set, self.device, self.dist, tta=False,
                                     num_workers=self.val_workers, desc="validate", classes=self.classes)
        return scores

    # --- checkpoints ----------------------------------------------------------------------------------
    def training_state(self) -> dict:
        state = {"model": export_refinement(self.net), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "epoch": self.state.epoch, "iteration": self.state.iteration,
                 "best_miou": self.state.best_miou, "seed": self.plan.seed, "epochs": self.plan.epochs,
                 "mode": self.net.record.mode, "backbone": self.net.record.backbone, "rng_cpu": torch.get_rng_state(),
                 "settings": self.settings}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def resume(self) -> None:
        """Continue from the ``last`` file: weights, optimizer, scaler, position and RNG."""
        path = self.checkpoints.path("last")
        if not os.path.exists(path):
            raise CheckpointError(f"`resume`: {path} does not exist; start without `resume` or check "
                                  f"`model_path`/`task_name`")
        stored, extra = read_refinement(path, with_extra=True)
        if "optimizer" not in extra:
            raise CheckpointError(f"`resume`: {path} holds only refinement weights, not a training state; start "
                                  f"without `resume` and pass it as `refine_path` instead")
        check_refines(stored, self.net.record, path)
        recorded = extra.get("settings") or {}
        for name in FIXED_ON_RESUME + ("refine_crop", "refine_crops"):
            if name in recorded and name in self.settings and recorded[name] != self.settings[name]:
                raise CheckpointError(f"`resume`: {path} was trained with `{name}` {recorded[name]}, this run asks for "
                                      f"{self.settings[name]}; resume with the same `{name}` or start a new "
                                      f"`task_name`")
        if extra["epoch"] > self.plan.epochs:
            raise CheckpointError(f"`resume`: {path} holds {extra['epoch']} epochs, more than the `epochs` "
                                  f"{self.plan.epochs} asked for; pass `epochs` {extra['epoch']} or more")
        self.net.load_state_dict(stored.state_dict())
        restore_training_state(self.optimizer, self.scaler, extra, self.device)
        self.state = TrainState(extra["epoch"], extra["iteration"], extra["best_miou"])
        self.checkpoints.saved_epoch = extra["epoch"]
        log.info(f"resumed {path}: {self.state.epoch} epochs done, step {self.state.iteration}")

    def _check_weights(self) -> None:
        for name, param in self.net.named_parameters():
            if not bool(torch.isfinite(param).all()):
                raise TrainingFault(f"refinement weight {name} became non-finite in epoch {self.state.epoch + 1}; "
                                    f"stopped without saving it. {self._kept()} (lower `lr` first)")

    def run_epoch(self) -> str:
        epoch, epochs = self.state.epoch, self.plan.epochs
        started = time.time()
        loss = self.train_epoch(epoch)
        self._check_weights()
        self.state.epoch = epoch + 1
        line = (f"refine epoch {epoch + 1}/{epochs} loss {loss:.4f} lr {self.optimizer.param_groups[0]['lr']:.2e} "
                f"{time.time() - started:.1f}s")
        if self.val_set is not None and (self.state.epoch % self.plan.val_every == 0 or self.state.epoch == epochs):
            scores = self.validate()
            if self.writer is not None:
                for key in ("miou", "mboundary_iou", "seam_accuracy"):
                    if scores[key] is not None:
                        self.writer.add_scalar(f"val/{key}", scores[key], self.state.epoch)
            line += f" val mIoU {scores['miou']:.4f} mBIoU {scores['mboundary_iou']:.4f}"
            line += save_if_best(self.state, scores["miou"], self.checkpoints, self.net)
        if self.checkpoints is not None:
            self.checkpoints.end_of_epoch(self.net, self.state.epoch, epochs, self.training_state())
        return line

    def fit(self, resume: bool = False) -> TrainState:
        """Train the remaining epochs (after ``resume`` from the ``last`` file when asked)."""
        if self.checkpoints is not None:
            self.checkpoints.check_space(self.net)
        if resume:
            if self.checkpoints is None:
                raise ValueError("resume needs a CheckpointPolicy")
            self.resume()
        elif self.plan.start_epoch:
            start = self.plan.start_epoch
            self.state = TrainState(epoch=start, iteration=start * len(self.loader))
        if self.state.epoch >= self.plan.epochs:
            if self.checkpoints is not None and self.checkpoints.enabled and self.checkpoints.final_weights() is None:
                save_refinement(self.net, self.checkpoints.path("epoch"))
            log.info(f"nothing to do: all {self.plan.epochs} epochs are already done")
        self.base.net.eval()
        started = time.time()
        run_epochs(self.run_epoch, lambda: self.state.epoch < self.plan.epochs, self._kept, self.device, self.cfg,
                   self.writer)
        if self.skipped:
            log.warning(f"skipped {self.skipped} unreadable training images (`skip_bad_images`)")
        final = None if self.checkpoints is None else self.checkpoints.final_weights()
        log.info(f"refinement training done: {self.state.epoch} epochs in {time.time() - started:.1f}s, peak memory "
                 f"{peak_memory_mb(self.device):.0f} MB" + (f"; weights {final}" if final else ""))
        return self.state
