"""Training loop of every mode, with validation, crash-safe checkpoints and exact resume.

What one iteration does is the original's (see FCTL_SPEC.md, Training): one batch of whole images,
each image's patches through the network in sub-batches whose losses are back-propagated at once
(gradients accumulate: the step follows the sum of the sub-batch mean losses, as the original), one
Adam step per image batch, the poly learning rate set before every iteration.

Reproducibility: the image order and the augmentation of an epoch are drawn from generators seeded by
(seed, epoch, rank); dropout uses torch's global generator, whose state is saved with the training
state at the end of every epoch. Resuming from ``<task>.last.pth`` therefore replays the remaining
epochs exactly as an uninterrupted run would (bit-for-bit on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tensorboardX import SummaryWriter

from dataset.classes import CLASS_NAMES, index_to_colour
from dataset.deepglobe import DeepGlobe, collate_list
from models.checkpoint import atomic_save, export_weights, load_state_into, read_checkpoint, save_weights
from utils.augment import random_flip_rotate
from utils.contexts import crop_patches, global_view, medium_contexts
from utils.distributed import DistInfo, all_reduce_sum
from utils.errors import CheckpointError, FCtLError
from utils.evaluation import evaluate_dataset
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
        self.skipped = 0  # unreadable training images skipped (--skip_bad_images)
        self.train_set = self._dataset("train")
        self.val_set = self._dataset("crossvali") if args.val else None
        self.sampler = DistributedSampler(self.train_set, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                          shuffle=True, seed=args.seed, drop_last=False)
        self.loader = DataLoader(self.train_set, batch_size=args.batch_size, sampler=self.sampler,
                                 num_workers=args.num_workers, collate_fn=collate_list,
                                 pin_memory=device.type == "cuda", persistent_workers=args.num_workers > 0)
        self.writer = None
        if dist_info.is_main:
            self.writer = SummaryWriter(os.path.join(args.log_path, args.task_name))

    def _dataset(self, split: str):
        ds = DeepGlobe(self.args.data_path, split, labelled=True, skip_bad=self.args.skip_bad_images)
        if self.args.max_images is not None:
            ds = Subset(ds, range(min(self.args.max_images, len(ds))))
        return ds

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

    def resume(self) -> None:
        path = self._path("last")
        if not os.path.exists(path):
            raise CheckpointError(f"--resume: {path} does not exist; start without --resume or check --model_path/--task_name")
        weights, _, extra = read_checkpoint(path, with_extra=True)
        if extra.get("mode") != self.net.mode or extra.get("backbone") != self.net.backbone_name:
            raise CheckpointError(f"--resume: {path} is a mode-{extra.get('mode')} {extra.get('backbone')} run, not "
                                  f"mode {self.net.mode} {self.net.backbone_name}; use another --task_name")
        load_state_into(self.net, weights, path, what="model (--resume)", allow_missing=False)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scaler.load_state_dict(extra["scaler"])
        self.state = TrainState(extra["epoch"], extra["iteration"], extra["best_miou"])
        torch.set_rng_state(extra["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in extra:
            torch.cuda.set_rng_state(extra["rng_cuda"], self.device)
        log.info(f"resumed {path}: {self.state.epoch} epochs done, step {self.state.iteration}, "
                 f"best mIoU {max(self.state.best_miou, 0):.4f}")

    # --- one image ------------------------------------------------------------------------------------
    def _backward(self, loss: torch.Tensor, sync: bool) -> None:
        context = contextlib.nullcontext() if sync or not self.dist.enabled else self.model.no_sync()
        with context:
            self.scaler.scale(loss).backward()

    def _check_loss(self, loss: torch.Tensor) -> float:
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingFault(
                f"loss became {value} at epoch {self.state.epoch + 1}, step {self.state.iteration + 1}; stopped. "
                f"{self._path('last')} holds the last good epoch: lower --lr, then resume with --resume")
        return value

    def _forward_loss(self, x, y, medium=None, global_top=None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.cfg.amp_dtype, enabled=self.cfg.amp):
            logits = self.model(x, medium=medium, global_top=global_top)
        return self.criterion(logits.float(), y), logits

    def _image_units(self, image: torch.Tensor, label: torch.Tensor):
        """Sub-batches of one augmented image: yields (x, y, medium, global_top)."""
        p, sb = self.cfg.size_p, self.cfg.sub_batch_size
        image, _ = pad_to_min(image, p)
        label, _ = pad_to_min(label[None], p)
        grid = make_grid(image.shape[-2], image.shape[-1], p)
        boxes = grid.boxes()
        g_top = None
        if self.net.needs_global:
            with torch.no_grad():
                g_top = self.net.encode_global(global_view(image, self.cfg.size_g))
        for start in range(0, len(boxes), sb):
            rows = [t for t, _ in boxes[start:start + sb]]
            cols = [l for _, l in boxes[start:start + sb]]
            x = crop_patches(image, rows, cols, p).float().div_(255)
            y = crop_patches(label, rows, cols, p)[:, 0].long()
            medium = None
            if self.net.needs_medium:
                medium = medium_contexts(image, rows, cols, p, self.cfg.context)
            yield x, y, medium, g_top

    def _global_units(self, images: list[torch.Tensor], labels: list[torch.Tensor]):
        """Mode 0: the resized whole images (labels resized nearest), in sub-batches."""
        g, sb = self.cfg.size_g, self.cfg.sub_batch_size
        xs = torch.cat([global_view(im, g) for im in images])
        ys = torch.stack([torch.nn.functional.interpolate(lb[None, None].float(), size=(g, g), mode="nearest")[0, 0]
                          for lb in labels]).long()
        for start in range(0, len(xs), sb):
            yield xs[start:start + sb], ys[start:start + sb], None, None

    def units(self, images: list[torch.Tensor], labels: list[torch.Tensor]) -> Iterator[tuple]:
        """The forward units (x, y, medium, global_top) of one image batch, in the original's order,
        built lazily so that only one sub-batch of crops and contexts exists at a time."""
        if self.net.mode == 0:
            yield from self._global_units(images, labels)
            return
        for img, lab in zip(images, labels):
            yield from self._image_units(img, lab)

    def train_step(self, units: Iterable[tuple], confusion: ConfusionMatrix | None = None) -> float:
        """One optimizer step over ``units``: back-propagate each sub-batch's loss, then step once.

        Returns the mean sub-batch loss. Raises TrainingFault, before any weight changes, on a
        non-finite loss. Under DDP only the last backward synchronises gradients (one look-ahead
        tells which one is last).
        """
        self.optimizer.zero_grad(set_to_none=True)
        total, count = 0.0, 0
        units = iter(units)
        current = next(units)
        while current is not None:
            following = next(units, None)
            x, y, medium, g_top = current
            loss, logits = self._forward_loss(x, y, medium, g_top)
            total += self._check_loss(loss)
            count += 1
            self._backward(loss, sync=following is None)
            if confusion is not None:
                confusion.update(logits.detach().argmax(1), y)
            current = following
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.iteration += 1
        return total / count

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
            if not batch["image"]:  # every image of the batch was unreadable (--skip_bad_images)
                continue
            lr = poly_lr(self.args.lr, self.state.iteration, total)
            set_lr(self.optimizer, lr)
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
        return float(loss_t[0] / max(loss_t[1], 1)), confusion.scores()

    def validate(self) -> dict:
        predictor = Predictor(self.model, self.cfg)
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
            log.warning(f"interrupted during epoch {self.state.epoch + 1}; {self._path('last')} holds the end of epoch "
                        f"{self.state.epoch}: continue with --resume")
            raise
        except torch.OutOfMemoryError:
            raise TrainingFault(f"out of memory on {self.device} with --sub_batch_size {args.sub_batch_size}: "
                                f"lower --sub_batch_size (or --size_p), then continue with --resume") from None
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.skipped:
            log.warning(f"{self.skipped} unreadable training images were skipped (--skip_bad_images)")
        log.info(f"training done: {self.state.epoch} epochs in {time.time() - started:.1f}s, "
                 f"peak memory {peak_memory_mb(self.device):.0f} MB; weights {self._path('epoch')}")
        return self.state
