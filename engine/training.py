"""Training loop of every mode, with validation, crash-safe checkpoints and exact resume.

What one iteration does is the released system's: one batch of whole images, each image's patches
through the network in sub-batches whose losses are back-propagated at once (gradients accumulate:
the step follows the sum of the sub-batch mean losses), one Adam step per image batch, the poly
learning rate set before every iteration.

The ``Trainer`` takes explicit objects (model, optimizer, loader, loss, checkpoint policy, writer, a
validation set), so a test drives it with a tiny model and an in-memory data set; the command
line builds those objects from its options.

Reproducibility: the image order and the augmentation of an epoch are drawn from generators seeded by
(seed, epoch, rank); dropout uses torch's global generator, whose state is saved with the training
state at the end of every epoch. Resuming from ``<task>.last.pth`` therefore replays the remaining
epochs exactly as an uninterrupted run would (bit-for-bit on the CPU).

Faults. Checkpoints follow ``engine.checkpoint_policy.CheckpointPolicy`` (atomic writes, ``last`` written
last). A non-finite loss stops the run before the weights change (we stop rather than skip the step:
a NaN usually means the learning rate is too high, and skipping would hide that); weights that became
non-finite are never written. Out of memory stops the run with a hint to lower the sub-batch size.
Ctrl-C stops at once. In all three cases ``<task>.last.pth`` holds the last completed epoch and the
message says so.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from dataset.classes import DEEPGLOBE, ClassTable
from engine.checkpoint_policy import CheckpointPolicy
from engine.evaluation import evaluate_dataset
from models.checkpoint import export_weights, load_state_into, save_weights
from models.interfaces import SegmentationNetwork
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor, out_of_memory
from pipeline.units import TrainingUnit, patch_units, whole_image_units
from utils.augment import random_flip_rotate
from utils.distributed import DistInfo, all_reduce_sum, unwrap
from utils.errors import DataError, Interrupted, TrainingFault, describe_signal, signal_of
from utils.learning_rate import poly_lr, set_lr
from utils.logging import get_logger, peak_memory_mb, progress
from utils.metrics import ConfusionMatrix
from utils.workers import iterate

log = get_logger("train")

def restore_training_state(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, extra: dict,
                           device: torch.device) -> None:
    """Put a training-state file's optimizer moments, fp16 loss scale and random state back. The
    optimizer's hyper-parameters stay this run's (a lower `lr` or another `weight_decay` after a stop
    take effect; the learning rate is set every step anyway)."""
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(extra["optimizer"])
    for group, values in zip(optimizer.param_groups, hyper):
        group.update(values)
    if scaler.is_enabled() and extra.get("scaler"):
        scaler.load_state_dict(extra["scaler"])
    elif scaler.is_enabled():
        log.info("the resumed run did not train in fp16: the fp16 loss scaler starts fresh")
    torch.set_rng_state(extra["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in extra:
        torch.cuda.set_rng_state(extra["rng_cuda"], device)


def run_epochs(run_epoch, pending, kept, device: torch.device, cfg: PipelineConfig, writer=None) -> None:
    """Call ``run_epoch()`` (which returns the epoch's log line) while ``pending()``; Ctrl-C (or SIGTERM,
    SIGHUP) becomes Interrupted and running out of memory a TrainingFault, both saying where the run can
    go on from (``kept()``); the writer is closed in any case."""
    try:
        while pending():
            log.info(run_epoch())
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP as StopSignal
        signum = signal_of(exc)
        raise Interrupted(f"interrupted ({describe_signal(signum)}); {kept()}", signum) from None
    except torch.OutOfMemoryError:
        raise TrainingFault(f"{out_of_memory(device, cfg)}. {kept()}") from None
    finally:
        if writer is not None:
            writer.close()


@dataclass(frozen=True)
class TrainingPlan:
    """How long and how fast a run trains (the options of the same names)."""

    epochs: int
    lr: float
    seed: int = 0
    val_every: int = 5
    start_epoch: int = 0  # epochs of the poly schedule already behind a fresh run (the Inria release: 50)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps taken
    best_miou: float = -1.0


def save_if_best(state: TrainState, miou: float, checkpoints: CheckpointPolicy | None, model: torch.nn.Module) -> str:
    """After a validation: when ``miou`` beats the run's best, record it and write the ``best`` file;
    returns what the epoch's log line adds (" (best)" or nothing)."""
    if miou <= state.best_miou:
        return ""
    state.best_miou = miou
    if checkpoints is not None:
        checkpoints.save_best(model)
    return " (best)"


class Trainer:
    """One training run: steps, epochs, validation, logs and checkpoints.

    model: the network to train (an FCtLNet, possibly wrapped in DistributedDataParallel);
    optimizer: over its trainable parameters; loader: batches of {"image": [uint8 (3, H, W)], "label":
    [uint8 (H, W)], "skipped": int} (see ``dataset.split_layout.collate_list``), its sampler re-seeded each
    epoch when it has ``set_epoch``; criterion: logits (B, C, p, p) float32, labels (B, p, p) -> loss;
    checkpoints: where files go (None: nothing is written); val_set: a labelled data set scored every
    ``plan.val_every`` epochs and after the last (None: no validation), read by ``val_workers``
    processes; writer: a tensorboardX-like ``add_scalar``/``add_image`` sink or None; settings: the
    run's values of ``engine.checkpoint_policy.FIXED_ON_RESUME``, recorded in the training state and
    compared when it is resumed; classes: the class table (names in logs, colours of the logged
    images, the class left out of mIoU).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 criterion: torch.nn.Module, cfg: PipelineConfig, plan: TrainingPlan, *,
                 device: torch.device, dist_info: DistInfo | None = None,
                 checkpoints: CheckpointPolicy | None = None,
                 val_set=None, val_workers: int = 0, writer=None, settings: dict | None = None,
                 classes: ClassTable = DEEPGLOBE) -> None:
        self.model = model
        self.net: SegmentationNetwork = unwrap(model)
        if not isinstance(self.net, SegmentationNetwork):
            raise TypeError(f"the trainer needs a SegmentationNetwork (models.interfaces), got {type(self.net).__name__}")
        self.optimizer = optimizer
        self.loader = loader
        self.criterion = criterion
        self.cfg = cfg
        self.plan = plan
        self.device = device
        self.dist = dist_info or DistInfo()
        self.checkpoints = checkpoints
        self.val_set = val_set
        self.val_workers = val_workers
        self.writer = writer
        self.settings = dict(settings or {})
        self.classes = classes
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and cfg.amp_dtype == torch.float16)
        self.state = TrainState()
        self.skipped = 0  # unreadable training images skipped, summed over epochs

    # --- checkpoints ---------------------------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything needed to continue exactly: weights, optimizer, schedule position, RNG."""
        state = {
            "model": export_weights(self.net),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "iteration": self.state.iteration,
            "best_miou": self.state.best_miou,
            "seed": self.plan.seed,
            "epochs": self.plan.epochs,
            "mode": self.net.mode,
            "backbone": self.net.backbone_name,
            "rng_cpu": torch.get_rng_state(),
            "settings": self.settings,
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _kept(self) -> str:
        if self.checkpoints is None:
            return "nothing is saved by this run"
        return self.checkpoints.kept()

    def _check_weights(self) -> None:
        """Refuse to save weights that became non-finite (a finite loss can still give inf gradients)."""
        for name, param in self.net.named_parameters():
            if param.requires_grad and not bool(torch.isfinite(param).all()):
                raise TrainingFault(f"weight {name} became non-finite in epoch {self.state.epoch + 1}; stopped "
                                    f"without saving it. {self._kept()} (lower `lr` first)")

    def resume(self) -> None:
        """Continue from the policy's ``last`` file: weights, optimizer, scaler, position and RNG."""
        if self.checkpoints is None:
            raise ValueError("resume needs a CheckpointPolicy")
        weights, meta, extra = self.checkpoints.read_last(self.net.mode, self.net.backbone_name, self.settings,
                                                          self.plan.epochs)
        path = self.checkpoints.path("last")
        load_state_into(self.net, weights, path, what="`resume`", allow_missing=False, meta=meta)
        restore_training_state(self.optimizer, self.scaler, extra, self.device)
        self.state = TrainState(extra["epoch"], extra["iteration"], extra["best_miou"])
        log.info(f"resumed {path}: {self.state.epoch} epochs done, step {self.state.iteration}, "
                 f"best mIoU {max(self.state.best_miou, 0):.4f}")

    # --- one image ------------------------------------------------------------------------------------
    def _local(self, sync: bool):
        """Context of a sub-batch's forward AND backward: under DDP, every one but the step's last runs in
        ``no_sync``. DDP then does exactly two collectives per step whatever the number of sub-batches of
        each process (which differs with image sizes, or when unreadable images are skipped): the buffer
        broadcast in the step's first forward and the gradient all-reduce in its last backward. (A forward
        outside ``no_sync`` would arm the gradient all-reduce of its backward even inside ``no_sync``.)"""
        return contextlib.nullcontext() if sync or not self.dist.enabled else self.model.no_sync()

    def _check_loss(self, loss: torch.Tensor) -> float:
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingFault(
                f"loss became {value} at epoch {self.state.epoch + 1}, step {self.state.iteration + 1}; stopped before "
                f"the weights changed. {self._kept()} (lower `lr` first)")
        return value

    def _forward_loss(self, unit: TrainingUnit) -> tuple[torch.Tensor, torch.Tensor]:
        with self.cfg.autocast(self.device):
            logits = self.model(unit.x, unit.inputs)
        return self.criterion(logits.float(), unit.y), logits

    def units(self, images: list[torch.Tensor], labels: list[torch.Tensor]) -> Iterator[TrainingUnit]:
        """The forward units of one image batch, in the released order (see ``pipeline.units``)."""
        if self.net.spec.whole_image:
            yield from whole_image_units(images, labels, self.cfg)
            return
        fill = 0 if self.classes.ignore_index is None else self.classes.ignore_index  # padding: class 0 as released
        for img, lab in zip(images, labels):
            yield from patch_units(self.net, img, lab, self.cfg, fill)

    def train_step(self, units: Iterable[TrainingUnit], confusion: ConfusionMatrix | None = None,
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
            with self._local(sync=following is None):
                loss, logits = self._forward_loss(current)
                total += self._check_loss(loss)
                count += 1
                self.scaler.scale(loss if weight == 1.0 else loss * weight).backward()
            if confusion is not None:
                confusion.update(logits.detach().argmax(1), current.y)
            current = following
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.iteration += 1
        return total / count

    def _blank_step(self) -> None:
        """Under DDP a process whose whole batch was skipped (unreadable images) must still join the
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
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        plan = self.plan
        aug = torch.Generator().manual_seed(plan.seed * 1_000_003 + epoch * 1009 + self.dist.rank)
        total = plan.epochs * len(self.loader)
        confusion = ConfusionMatrix(self.net.n_class, self.device, self.classes.ignore_index)
        losses = []
        with iterate(self.loader) as batches:
            bar = progress(batches, total=len(self.loader), enabled=self.dist.is_main,
                           desc=f"epoch {epoch + 1}/{plan.epochs}", unit="batch")
            for batch in bar:
                self.skipped += batch["skipped"]
                lr = poly_lr(plan.lr, self.state.iteration, total)
                set_lr(self.optimizer, lr)
                if not batch["image"]:  # every image of the batch was unreadable and skipped
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
                losses.append(self.train_step(self.units(images, labels), confusion))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
                if self.writer is not None:
                    self.writer.add_scalar("train/loss", losses[-1], self.state.iteration)
                    self.writer.add_scalar("train/lr", lr, self.state.iteration)
        confusion.all_reduce_()
        loss_t = all_reduce_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=self.device))
        if loss_t[1] == 0:
            raise DataError(f"no training image could be read in epoch {epoch + 1}: all were skipped as unreadable "
                            f"(`skip_bad_images`); fix or replace the files named in the warnings above")
        return float(loss_t[0] / max(loss_t[1], 1)), confusion.scores(self.classes.unscored)

    def validate(self) -> dict:
        """Score the validation set with rank 0's weights and buffers on every process."""
        if self.dist.enabled:
            # Each process may have updated running buffers (none in the built-in backbones, which do
            # not use BatchNorm) from its own images since the last step's broadcast; use rank 0's,
            # which are the ones saved. The unwrapped model runs no collectives,
            # so processes with different numbers of validation images cannot fall out of step.
            for buffer in self.net.buffers():
                torch.distributed.broadcast(buffer, 0)
        predictor = Predictor(self.net, self.cfg)
        scores, sample = evaluate_dataset(predictor, self.val_set, self.device, self.dist, tta=False,
                                          num_workers=self.val_workers, desc="validate", want_sample=True,
                                          classes=self.classes)
        if self.writer is not None and sample is not None:
            image, label, pred = sample
            self.writer.add_image("val/image", image, self.state.epoch)
            self.writer.add_image("val/label", self.classes.label_to_colour(label).permute(2, 0, 1), self.state.epoch)
            self.writer.add_image("val/prediction", self.classes.index_to_colour(pred).permute(2, 0, 1),
                                  self.state.epoch)
        return scores

    def _log_scores(self, prefix: str, scores: dict) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar(f"{prefix}/miou", scores["miou"], self.state.epoch)
        for name, iou in zip(self.classes.names, scores["iou"]):
            self.writer.add_scalar(f"{prefix}/iou_{name}", iou, self.state.epoch)

    def _validation_due(self) -> bool:
        epoch, plan = self.state.epoch, self.plan
        return self.val_set is not None and (epoch % plan.val_every == 0 or epoch == plan.epochs)

    def run_epoch(self) -> str:
        """Train the next epoch, validate when due, write its checkpoints; returns its log line."""
        epoch, epochs = self.state.epoch, self.plan.epochs
        started = time.time()
        loss, train_scores = self.train_epoch(epoch)
        self._check_weights()
        self.state.epoch = epoch + 1
        line = (f"epoch {epoch + 1}/{epochs} loss {loss:.4f} train mIoU {train_scores['miou']:.4f} "
                f"lr {self.optimizer.param_groups[0]['lr']:.2e} {time.time() - started:.1f}s")
        self._log_scores("train", train_scores)
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", loss, self.state.epoch)
        if self._validation_due():
            val_scores = self.validate()
            self._log_scores("val", val_scores)
            line += f" val mIoU {val_scores['miou']:.4f}"
            line += save_if_best(self.state, val_scores["miou"], self.checkpoints, self.net)
        if self.checkpoints is not None:
            self.checkpoints.end_of_epoch(self.net, self.state.epoch, epochs, self.training_state())
        return line

    def _nothing_to_do(self) -> None:
        """A resumed run whose epochs are all done: make sure the final weights exist, and say where."""
        epochs = self.plan.epochs
        if self.checkpoints is not None and self.checkpoints.enabled and self.checkpoints.final_weights() is None:
            # Killed between the last epoch's writes: the resumed weights are that epoch's.
            save_weights(self.net, self.checkpoints.path("epoch"))
        log.info(f"nothing to do: all {epochs} epochs are already done")

    def fit(self, resume: bool = False) -> TrainState:
        """Train the remaining epochs (after ``resume`` from the ``last`` file when asked)."""
        epochs = self.plan.epochs
        if self.checkpoints is not None:
            self.checkpoints.check_space(self.net)
        if resume:
            self.resume()
        elif self.plan.start_epoch:
            start = self.plan.start_epoch
            self.state = TrainState(epoch=start, iteration=start * len(self.loader))
        if self.state.epoch >= epochs:
            self._nothing_to_do()
        started = time.time()
        run_epochs(self.run_epoch, lambda: self.state.epoch < epochs, self._kept, self.device, self.cfg, self.writer)
        if self.skipped:
            log.warning(f"skipped {self.skipped} unreadable training images (`skip_bad_images`; an image is counted "
                        f"once per epoch, on this process)")
        final = None if self.checkpoints is None else self.checkpoints.final_weights()
        weights = f"; weights {final}" if final else ""
        log.info(f"training done: {self.state.epoch} epochs in {time.time() - started:.1f}s, "
                 f"peak memory {peak_memory_mb(self.device):.0f} MB{weights}")
        return self.state
