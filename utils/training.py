"""Training loop of every mode, with validation, crash-safe checkpoints and exact resume.

What one iteration does is the original's (see FCTL_SPEC.md, Training): one batch of whole images,
each image's patches through the network in sub-batches whose losses are back-propagated at once
(gradients accumulate: the step follows the sum of the sub-batch mean losses, as the original), one
Adam step per image batch, the poly learning rate set before every iteration.

Reproducibility: the image order and the augmentation of an epoch are drawn from generators seeded by
(seed, epoch, rank); dropout uses torch's global generator, whose state is saved with the training
state at the end of every epoch. Resuming from ``<task>.last.pth`` therefore replays the remaining
epochs exactly as an uninterrupted run would (bit-for-bit on the CPU).

Faults. Every checkpoint is written atomically (``atomic_save``), ``<task>.last.pth`` last of an epoch's
files, so a kill at any moment leaves the previous complete set; temporaries a SIGKILL left behind are
deleted when the next run starts. A non-finite loss stops the run before the weights change (we stop
rather than skip the step: a NaN usually means the learning rate is too high, and skipping would hide
that); weights that became non-finite are never written. Out of memory stops the run with a hint to lower
--sub_batch_size. Ctrl-C stops at once. In all three cases ``<task>.last.pth`` holds the last completed
epoch and the message says so; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from glob import escape as glob_escape
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tensorboardX import SummaryWriter

from dataset.classes import CLASS_NAMES, index_to_colour
from dataset.deepglobe import DeepGlobe, collate_list, first_images
from models.checkpoint import atomic_save, export_weights, load_state_into, read_checkpoint, save_weights
from utils.augment import random_flip_rotate
from utils.contexts import crop_patches, global_view, medium_contexts
from utils.distributed import DistInfo, all_reduce_sum
from utils.errors import CheckpointError, DataError, FCtLError, Interrupted
from utils.evaluation import evaluate_dataset
from utils.files import remove_stale_temporaries
from utils.grid import make_grid, pad_to_min
from utils.inference import PipelineConfig, Predictor
from utils.logging import get_logger, peak_memory_mb, progress
from utils.loss import FocalLoss
from utils.metrics import ConfusionMatrix
from utils.schedule import poly_lr, set_lr

log = get_logger("train")


class TrainingFault(FCtLError):
    """Training cannot go on (non-finite loss, out of memory); the last good checkpoint is kept."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps taken
    best_miou: float = -1.0


def checkpoint_path(model_path: str, task: str, tag: str) -> str:
    """``<model_path>/<task>.<tag>.pth`` (tags: epoch<E>, epoch, best, last)."""
    return os.path.join(model_path, f"{task}.{tag}.pth")


def keep_epoch_checkpoint(epoch: int) -> bool:
    """The original's schedule: every 5 epochs, and every epoch from epoch 34 on (1-based)."""
    return epoch % 5 == 0 or epoch >= 34


class Trainer:
    """Owns the optimizer, data, logs and checkpoints of one training run."""

    def __init__(self, args: argparse.Namespace, model: torch.nn.Module, device: torch.device, dist_info: DistInfo,
                 amp_dtype: torch.dtype) -> None:
        self.args = args
        self.model = model
        self.net = model.module if hasattr(model, "module") else model
        self.device = device
        self.dist = dist_info
        self.cfg = PipelineConfig(args.size_p, args.size_g, args.context, args.sub_batch_size, args.amp, amp_dtype)
        self.criterion = FocalLoss(gamma=3.0)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)
        self.state = TrainState()
        self.saved_epoch: int | None = None  # epoch held by <task>.last.pth (None: no such file yet)
        self.skipped = 0  # unreadable training images skipped (--skip_bad_images), summed over epochs
        self.train_set = self._dataset("train")
        self.val_set = self._dataset("crossvali") if args.val else None
        self.sampler = DistributedSampler(self.train_set, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                          shuffle=True, seed=args.seed, drop_last=False)
        self.loader = DataLoader(self.train_set, batch_size=args.batch_size, sampler=self.sampler,
                                 num_workers=args.num_workers, collate_fn=collate_list,
                                 pin_memory=device.type == "cuda", persistent_workers=args.num_workers > 0)
        self.writer = None
        if dist_info.is_main:
            stale = remove_stale_temporaries(args.model_path, f"{glob_escape(args.task_name)}.*.pth")
            if stale:
                log.warning(f"removed {len(stale)} temporary files left in {args.model_path} by an interrupted "
                            f"checkpoint write (e.g. {os.path.basename(stale[0])}); the .pth files are complete")
            self.writer = SummaryWriter(os.path.join(args.log_path, args.task_name))

    def _dataset(self, split: str):
        return first_images(DeepGlobe(self.args.data_path, split, labelled=True, skip_bad=self.args.skip_bad_images),
                            self.args.max_images)

    # --- checkpoints ---------------------------------------------------------------------------------
    def _path(self, tag: str) -> str:
        return checkpoint_path(self.args.model_path, self.args.task_name, tag)

    def save_state(self) -> None:
        """Everything needed to continue exactly: weights, optimizer, schedule position, RNG."""
        if not self.dist.is_main:
            return
        state = {
            "model": export_weights(self.net),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "iteration": self.state.iteration,
            "best_miou": self.state.best_miou,
            "seed": self.args.seed,
            "epochs": self.args.epochs,
            "mode": self.net.mode,
            "backbone": self.net.backbone_name,
            "rng_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        atomic_save(state, self._path("last"))
        self.saved_epoch = self.state.epoch

    def _kept(self) -> str:
        """Where a stopped run can go on from, for messages."""
        if self.saved_epoch is None:
            return "no epoch was completed, so nothing was saved: start again without --resume"
        return f"{self._path('last')} holds the end of epoch {self.saved_epoch}: continue with --resume"

    def _check_weights(self) -> None:
        """Refuse to save weights that became non-finite (a finite loss can still give inf gradients)."""
        for name, param in self.net.named_parameters():
            if param.requires_grad and not bool(torch.isfinite(param).all()):
                raise TrainingFault(f"weight {name} became non-finite in epoch {self.state.epoch + 1}; stopped "
                                    f"without saving it. {self._kept()} (lower --lr first)")

    def resume(self) -> None:
        path = self._path("last")
        if not os.path.exists(path):
            raise CheckpointError(f"--resume: {path} does not exist; start without --resume or check --model_path/--task_name")
        weights, meta, extra = read_checkpoint(path, with_extra=True)
        if meta["kind"] != "training-state":
            raise CheckpointError(f"--resume: {path} holds only weights, not a training state (optimizer, epoch); "
                                  f"start without --resume and pass it as --pre_path instead")
        if extra.get("mode") != self.net.mode or extra.get("backbone") != self.net.backbone_name:
            raise CheckpointError(f"--resume: {path} is a mode-{extra.get('mode')} {extra.get('backbone')} run, not "
                                  f"mode {self.net.mode} {self.net.backbone_name}; use another --task_name")
        load_state_into(self.net, weights, path, what="--resume", allow_missing=False, meta=meta)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scaler.load_state_dict(extra["scaler"])
        self.state = TrainState(extra["epoch"], extra["iteration"], extra["best_miou"])
        self.saved_epoch = self.state.epoch
        torch.set_rng_state(extra["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in extra:
            torch.cuda.set_rng_state(extra["rng_cuda"], self.device)
        log.info(f"resumed {path}: {self.state.epoch} epochs done, step {self.state.iteration}, "
                 f"best mIoU {max(self.state.best_miou, 0):.4f}")

    # --- one image ------------------------------------------------------------------------------------
    def _local(self, sync: bool):
        """Context of a sub-batch's forward AND backward: under DDP, every one but the step's last runs in
        ``no_sync``. DDP then does exactly two collectives per step whatever the number of sub-batches of
        each process (which differs with image sizes, or when --skip_bad_images drops images): the buffer
        broadcast in the step's first forward and the gradient all-reduce in its last backward. (A forward
        outside ``no_sync`` would arm the gradient all-reduce of its backward even inside ``no_sync``.)"""
        return contextlib.nullcontext() if sync or not self.dist.enabled else self.model.no_sync()

    def _check_loss(self, loss: torch.Tensor) -> float:
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingFault(
                f"loss became {value} at epoch {self.state.epoch + 1}, step {self.state.iteration + 1}; stopped before "
                f"the weights changed. {self._kept()} (lower --lr first)")
        return value

    def _forward_loss(self, x, y, medium=None, global_context=None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.cfg.amp_dtype, enabled=self.cfg.amp):
            logits = self.model(x, medium=medium, global_context=global_context)
        return self.criterion(logits.float(), y), logits

    def _image_units(self, image: torch.Tensor, label: torch.Tensor):
        """Sub-batches of one augmented image: yields (x, y, medium, global_context)."""
        p, sb = self.cfg.size_p, self.cfg.sub_batch_size
        image, _ = pad_to_min(image, p)
        label, _ = pad_to_min(label[None], p)
        grid = make_grid(image.shape[-2], image.shape[-1], p)
        boxes = grid.boxes()
        g_context = None
        if self.net.needs_global:
            with torch.no_grad():
                g_context = self.net.encode_global(global_view(image, self.cfg.size_g))
        for start in range(0, len(boxes), sb):
            rows = [t for t, _ in boxes[start:start + sb]]
            cols = [l for _, l in boxes[start:start + sb]]
            x = crop_patches(image, rows, cols, p).float().div_(255)
            y = crop_patches(label, rows, cols, p)[:, 0].long()
            medium = None
            if self.net.needs_medium:
                medium = medium_contexts(image, rows, cols, p, self.cfg.context)
            yield x, y, medium, g_context

    def _global_units(self, images: list[torch.Tensor], labels: list[torch.Tensor]):
        """Mode 0: the resized whole images (labels resized nearest), in sub-batches."""
        g, sb = self.cfg.size_g, self.cfg.sub_batch_size
        xs = torch.cat([global_view(im, g) for im in images])
        ys = torch.stack([torch.nn.functional.interpolate(lb[None, None].float(), size=(g, g), mode="nearest")[0, 0]
                          for lb in labels]).long()
        for start in range(0, len(xs), sb):
            yield xs[start:start + sb], ys[start:start + sb], None, None

    def units(self, images: list[torch.Tensor], labels: list[torch.Tensor]) -> Iterator[tuple]:
        """The forward units (x, y, medium, global_context) of one image batch, in the original's order,
        built lazily so that only one sub-batch of crops and contexts exists at a time."""
        if self.net.mode == 0:
            yield from self._global_units(images, labels)
            return
        for img, lab in zip(images, labels):
            yield from self._image_units(img, lab)

    def train_step(self, units: Iterable[tuple], confusion: ConfusionMatrix | None = None,
                   weight: float = 1.0) -> float:
        """One optimizer step over ``units``: back-propagate each sub-batch's loss, then step once.

        Returns the mean sub-batch loss. Raises TrainingFault, before any weight changes, on a
        non-finite loss. Under DDP only the last backward synchronises gradients (one look-ahead
        tells which one is last; see ``_local``). ``weight`` scales the back-propagated losses (0: see
        ``_blank_step``).
        """
        self.optimizer.zero_grad(set_to_none=True)
        total, count = 0.0, 0
        units = iter(units)
        current = next(units)
        while current is not None:
            following = next(units, None)
            x, y, medium, g_context = current
            with self._local(sync=following is None):
                loss, logits = self._forward_loss(x, y, medium, g_context)
                total += self._check_loss(loss)
                count += 1
                self.scaler.scale(loss if weight == 1.0 else loss * weight).backward()
            if confusion is not None:
                confusion.update(logits.detach().argmax(1), y)
            current = following
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.iteration += 1
        return total / count

    def _blank_step(self) -> None:
        """Under DDP a process whose whole batch was skipped (--skip_bad_images) must still join the
        collectives of this step, or the processes fall out of step and hang. It steps on a blank
        image with its loss multiplied by 0: it adds zero gradients to the average (which the other
        processes' gradients therefore dominate a little less in this one step)."""
        p = self.cfg.size_p
        image = torch.zeros(3, p, p, dtype=torch.uint8, device=self.device)
        label = torch.zeros(p, p, dtype=torch.uint8, device=self.device)
        self.model.eval()  # the blank image must not move any running statistics
        try:
            self.train_step(self.units([image], [label]), weight=0.0)
        finally:
            self.model.train()

    # --- epochs ---------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[float, dict]:
        """One pass over the training images; returns (mean loss, train scores)."""
        self.model.train()
        self.sampler.set_epoch(epoch)
        aug = torch.Generator().manual_seed(self.args.seed * 1_000_003 + epoch * 1009 + self.dist.rank)
        total = self.args.epochs * len(self.loader)
        confusion = ConfusionMatrix(self.net.n_class, self.device)
        losses = []
        bar = progress(self.loader, enabled=self.dist.is_main, desc=f"epoch {epoch + 1}/{self.args.epochs}", unit="batch")
        for batch in bar:
            self.skipped += batch["skipped"]
            lr = poly_lr(self.args.lr, self.state.iteration, total)
            set_lr(self.optimizer, lr)
            if not batch["image"]:  # every image of the batch was unreadable (--skip_bad_images)
                if self.dist.enabled:
                    self._blank_step()
                continue
            images, labels = [], []
            for img, lab in zip(batch["image"], batch["label"]):
                img = img.to(self.device, non_blocking=True)
                lab = lab.to(self.device, non_blocking=True)
                img, lab = random_flip_rotate(img, lab, aug)
                images.append(img)
                labels.append(lab)
            units = self.units(images, labels)
            losses.append(self.train_step(units, confusion))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            if self.writer is not None:
                self.writer.add_scalar("train/loss", losses[-1], self.state.iteration)
                self.writer.add_scalar("train/lr", lr, self.state.iteration)
        confusion.all_reduce_()
        loss_t = all_reduce_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=self.device))
        if loss_t[1] == 0:
            raise DataError(f"no training image could be read in epoch {epoch + 1}: all were skipped as unreadable "
                            f"(--skip_bad_images); fix or replace the files named in the warnings above")
        return float(loss_t[0] / max(loss_t[1], 1)), confusion.scores()

    def validate(self) -> dict:
        """Score the validation split with rank 0's weights and buffers on every process."""
        if self.dist.enabled:
            # Each process may have updated running buffers (none in the built-in backbones, which do
            # not use BatchNorm) from its own images since the last step's broadcast; use rank 0's,
            # which are the ones saved. The unwrapped model runs no collectives,
            # so processes with different numbers of validation images cannot fall out of step.
            for buffer in self.net.buffers():
                torch.distributed.broadcast(buffer, 0)
        predictor = Predictor(self.net, self.cfg)
        scores, sample = evaluate_dataset(predictor, self.val_set, self.device, self.dist, tta=False,
                                          num_workers=self.args.num_workers, desc="validate", want_sample=True)
        if self.writer is not None and sample is not None:
            image, label, pred = sample
            self.writer.add_image("val/image", image, self.state.epoch)
            self.writer.add_image("val/label", index_to_colour(label).permute(2, 0, 1), self.state.epoch)
            self.writer.add_image("val/prediction", index_to_colour(pred).permute(2, 0, 1), self.state.epoch)
        return scores

    def _log_scores(self, prefix: str, scores: dict) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar(f"{prefix}/miou", scores["miou"], self.state.epoch)
        for name, iou in zip(CLASS_NAMES, scores["iou"]):
            self.writer.add_scalar(f"{prefix}/iou_{name}", iou, self.state.epoch)

    def fit(self) -> TrainState:
        args = self.args
        if args.resume:
            self.resume()
        if self.state.epoch >= args.epochs:
            log.info(f"nothing to do: {self.state.epoch} of {args.epochs} epochs already done")
        started = time.time()
        try:
            while self.state.epoch < args.epochs:
                epoch = self.state.epoch
                t0 = time.time()
                loss, train_scores = self.train_epoch(epoch)
                self._check_weights()
                self.state.epoch = epoch + 1
                line = (f"epoch {epoch + 1}/{args.epochs} loss {loss:.4f} train mIoU {train_scores['miou']:.4f} "
                        f"lr {self.optimizer.param_groups[0]['lr']:.2e} {time.time() - t0:.1f}s")
                self._log_scores("train", train_scores)
                if self.writer is not None:
                    self.writer.add_scalar("train/epoch_loss", loss, self.state.epoch)
                if self.val_set is not None and (self.state.epoch % args.val_every == 0 or self.state.epoch == args.epochs):
                    val_scores = self.validate()
                    self._log_scores("val", val_scores)
                    line += f" val mIoU {val_scores['miou']:.4f}"
                    if val_scores["miou"] > self.state.best_miou:
                        self.state.best_miou = val_scores["miou"]
                        if self.dist.is_main:
                            save_weights(self.net, self._path("best"))
                        line += " (best)"
                if self.dist.is_main:
                    if keep_epoch_checkpoint(self.state.epoch):
                        save_weights(self.net, self._path(f"epoch{self.state.epoch}"))
                    if self.state.epoch == args.epochs:
                        save_weights(self.net, self._path("epoch"))
                self.save_state()
                log.info(line)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted (Ctrl-C); {self._kept()}") from None
        except torch.OutOfMemoryError:
            raise TrainingFault(f"out of memory on {self.device} with --sub_batch_size {args.sub_batch_size} (patches "
                                f"per forward pass): lower --sub_batch_size (e.g. {max(1, args.sub_batch_size // 2)}) "
                                f"or --size_p. {self._kept()}") from None
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.skipped:
            log.warning(f"skipped {self.skipped} unreadable training images (--skip_bad_images; an image is counted "
                        f"once per epoch, on this process)")
        log.info(f"training done: {self.state.epoch} epochs in {time.time() - started:.1f}s, "
                 f"peak memory {peak_memory_mb(self.device):.0f} MB; weights {self._path('epoch')}")
        return self.state
