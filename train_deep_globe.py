"""FCtL on DeepGlobe, Inria Aerial (--dataset inria) or classes of your own (--dataset custom --classes):
train (--train), evaluate a labelled split (--evaluate), predict a test split, or predict scenes of your
own (--input: GeoTIFFs of any size, JPEGs, PNGs).

Run ``python train_deep_globe.py --help`` for the options; the shell scripts next to this file hold the
staged recipe of the paper. Under ``torchrun --nproc_per_node=N`` the same command uses N processes.

Exit status: 0 on success; 2 with one line ``error: <what and what to do>`` on stderr for every problem
the user can fix (bad option, file, checkpoint, unwritable folder, non-finite loss, out of memory, a
full disk); 128 + the signal after Ctrl-C (130), SIGTERM (143) or SIGHUP (129), the line saying which
checkpoint to resume from. Tracebacks are kept for bugs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from dataset.io import allow_large_images
from dataset.split_layout import SplitDataset, first_images, item_bytes
from engine.evaluation import evaluate_dataset, format_scores, predict_dataset, write_metrics
from models.backbones import memory_format_for
from models.modes import mode_spec
from models.setup import create_model
from option import (
    OptionError,
    RunKind,
    Settings,
    build_parser,
    exit_status_of_signal,
    flag_renamer,
    parse_options,
    report_error,
)
from pipeline.config import PipelineConfig
from pipeline.predictor import Predictor, out_of_memory
from pipeline.refine import Refinement
from utils.distributed import DistInfo, barrier, init_distributed, shutdown_distributed
from utils.errors import ConfigError, FCtLError, describe_signal, signal_of
from utils.files import ensure_writable_dir, remove_stale_temporaries
from utils.logging import SafeWriter, setup_logging
from utils.memory import fix_mmap_threshold
from utils.workers import check_shared_memory, stop_on_signals, worker_init


@dataclass(frozen=True)
class _Run:
    """What every handler works with: the settings, this process's device and place in the job, the log."""

    settings: Settings
    device: torch.device
    info: DistInfo
    log: logging.Logger

    def split(self, split: str, labelled: bool) -> Dataset:
        """One split of the data folder as the settings ask (bad images skipped or not, at most max_images)."""
        s = self.settings
        return first_images(SplitDataset(s.paths.data_path, split, labelled=labelled, skip_bad=s.system.skip_bad_images,
                                      classes=s.dataset.classes, bands=s.dataset.input_bands.count), s.system.max_images)

    def output_folder(self, folder: str, setting: str, remove_stale: Callable[[], list[str]]) -> None:
        """Make ``folder`` (the value of ``setting``) ready for this run's files: created and checked
        writable by every process, then, on the main one, cleared of the temporaries that an interrupted
        earlier run left there (``remove_stale`` deletes them and returns their paths) with a warning;
        every process waits for that before any writes."""
        ensure_writable_dir(folder, setting)
        if self.info.is_main:
            stale = remove_stale()
            if stale:
                self.log.warning(f"removed {len(stale)} temporary files left in {folder} by an interrupted write "
                                 f"(e.g. {os.path.basename(stale[0])}); the finished files there are complete")
        barrier()


def _pipeline(s: Settings) -> PipelineConfig:
    p = s.pipeline
    return PipelineConfig(p.size_p, p.size_g, p.context, p.sub_batch_size, p.amp, p.amp_dtype, p.context2,
                          merge=p.merge)


def _checkpoints(run: _Run, save):
    """The run's checkpoint policy (``save(model, path)`` writes its weight files), its folder made ready."""
    from engine.checkpoint_policy import CheckpointPolicy, keep_epoch

    s = run.settings
    checkpoints = CheckpointPolicy(s.paths.model_path, s.run.task_name, enabled=run.info.is_main,
                                   keep=lambda epoch: keep_epoch(epoch, s.training.save_each_epoch_from), save=save)
    run.output_folder(s.paths.model_path, "model_path", checkpoints.remove_stale)
    return checkpoints


def _distributed(run: _Run, module: torch.nn.Module) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun, else itself."""
    if not run.info.enabled:
        return module
    device = run.device
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _training_data(run: _Run):
    """(training loader, validation split or None) of a training run."""
    from torch.utils.data import DataLoader, DistributedSampler

    from dataset.split_layout import collate_list

    s, device, info = run.settings, run.device, run.info
    t, workers = s.training, s.system.num_workers
    train_set = run.split("train", labelled=True)
    val_set = run.split("crossvali", labelled=True) if t.validate else None
    # Each worker prefetches 2 batches (torch's default) of batch_size images.
    check_shared_memory(workers, 2 * workers * t.batch_size, item_bytes(train_set))
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=t.seed, drop_last=False)
    loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_list, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, worker_init_fn=worker_init)
    return loader, val_set


def _train(run: _Run, model: torch.nn.Module) -> None:
    """Build the training run's objects from the settings and fit."""
    from engine.checkpoint_policy import FIXED_ON_RESUME
    from engine.training import Trainer, TrainingPlan
    from models.checkpoint import save_weights
    from utils.loss import FocalLoss

    s, device, info = run.settings, run.device, run.info
    t = s.training
    checkpoints = _checkpoints(run, save_weights)
    wrapped = _distributed(run, model)
    loader, val_set = _training_data(run)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    writer = SafeWriter(s.paths.log_dir) if info.is_main else None
    plan = TrainingPlan(epochs=t.epochs, lr=t.lr, seed=t.seed, val_every=t.val_every, start_epoch=t.start_epoch)
    criterion = FocalLoss(gamma=3.0, ignore_index=s.dataset.classes.ignore_index)
    trainer = Trainer(wrapped, optimizer, loader, criterion, _pipeline(s), plan, device=device,
                      dist_info=info, checkpoints=checkpoints, val_set=val_set, val_workers=s.system.num_workers,
                      writer=writer, settings={name: s.value(name) for name in FIXED_ON_RESUME},
                      classes=s.dataset.classes)
    trainer.fit(resume=t.resume)


def _train_refinement(run: _Run, model: torch.nn.Module, refinement: Refinement) -> None:
    """Train the refinement stage on top of the frozen ``model``."""
    from engine.checkpoint_policy import FIXED_ON_RESUME
    from engine.refinement import RefinementPlan, RefinementTrainer
    from models.refinement import save_refinement

    s, device, info = run.settings, run.device, run.info
    t = s.training
    checkpoints = _checkpoints(run, save_refinement)
    net = refinement.net.train()
    wrapped = _distributed(run, net)
    loader, val_set = _training_data(run)
    optimizer = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    writer = SafeWriter(s.paths.log_dir) if info.is_main else None
    plan = RefinementPlan(epochs=t.epochs, lr=t.lr, seed=t.seed, val_every=t.val_every, crops=t.refine_crops,
                          crop=t.refine_crop, start_epoch=t.start_epoch)
    settings = {name: s.value(name) for name in (*FIXED_ON_RESUME, "refine_crop", "refine_crops")}
    cfg = _pipeline(s)
    trainer = RefinementTrainer(refinement, Predictor(model, cfg), optimizer, loader, cfg, plan,
                                device=device, model=wrapped, dist_info=info, checkpoints=checkpoints,
                                val_set=val_set, val_workers=s.system.num_workers, writer=writer, settings=settings,
                                classes=s.dataset.classes)
    trainer.fit(resume=t.resume)


def _refinement(s: Settings, device: torch.device) -> Refinement | None:
    """The refinement of this run (``refine_path``, or a fresh one to train with ``refine``), with the global
    model of ``glo_path`` as its context when it reads one; None when the run has none."""
    from models.refinement import RefinementNet, RefinementRecord, check_refines, read_refinement

    if not (s.run.refine or s.paths.refine_path):
        return None
    if not s.dataset.input_bands.is_rgb:
        raise ConfigError(f"the refinement reads RGB images, this data set's have {s.dataset.input_bands.count} "
                          f"bands; drop `refine`/`refine_path`")
    stored = None if s.paths.refine_path is None else read_refinement(s.paths.refine_path)
    # A trained refinement reads what it was trained with; a fresh one what `refine_context` says.
    reads_global = (stored.record.context if stored is not None and not s.run.refine
                    else s.paths.refine_context) == "global"
    context = None
    if reads_global and s.paths.glo_path is not None:
        context = create_model(0, s.run.backbone, pre_path=s.paths.glo_path, n_class=s.dataset.classes.n_class,
                               correlation=s.dataset.correlation, class_table=s.dataset.classes.record(),
                               pre_setting="glo_path").to(device)
    record = RefinementRecord(mode=s.run.mode, backbone=s.run.backbone, n_class=s.dataset.classes.n_class,
                              correlation=s.dataset.correlation, classes=s.dataset.classes.record(),
                              context="global" if reads_global else "none")
    if stored is None:
        net = RefinementNet(record)
    else:
        net = stored
        check_refines(net, record, s.paths.refine_path)
    # channels_last for inference: 12.0 against 20.2 s for the refinement of a 2448 px image on the CPU
    # (docs/refinement.md); training keeps the default layout.
    net = net.to(device) if s.run.refine else net.to(device, memory_format=torch.channels_last)
    return Refinement(net, context)


def _evaluate(run: _Run, predictor: Predictor) -> None:
    s = run.settings
    split, metrics_path = s.run.split, s.paths.metrics_path
    if run.info.is_main:  # fail now, not after scoring the whole split
        folder = os.path.dirname(os.path.abspath(metrics_path))
        if os.path.isdir(metrics_path):
            raise OptionError(f"--metrics_path {metrics_path} is a folder; give the path of a .json file")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise OptionError(f"--metrics_path {metrics_path} lies under {folder}, which is a file, not a folder; "
                              f"give a path in a folder")
        ensure_writable_dir(folder, "metrics_path")
    dataset = run.split(split, labelled=True)
    started = time.time()
    scores, _ = evaluate_dataset(predictor, dataset, run.device, run.info, tta=s.run.tta,
                                 num_workers=s.system.num_workers, classes=s.dataset.classes,
                                 boundary_px=s.run.boundary_px)
    if run.info.is_main:
        scores.update(split=split, mode=s.run.mode, backbone=s.run.backbone, tta=s.run.tta, images=len(dataset),
                      dataset=s.dataset.name, classes=list(s.dataset.classes.names))
        write_metrics(metrics_path, scores)
        run.log.info(format_scores(scores, s.dataset.classes))
        run.log.info(f"{len(dataset)} images ({scores['skipped']} skipped) in {time.time() - started:.1f}s; "
                     f"metrics written to {metrics_path}")


def _predict(run: _Run, predictor: Predictor) -> None:
    s = run.settings
    folder = s.paths.prediction_path
    dataset = run.split(s.run.split, labelled=False)
    run.output_folder(folder, "prediction_path", lambda: remove_stale_temporaries(folder, "*_mask.png"))
    summary = predict_dataset(predictor, dataset, folder, run.device, run.info, tta=s.run.tta,
                              num_workers=s.system.num_workers, classes=s.dataset.classes)
    if run.info.is_main:
        per_image = summary["seconds"] / max(summary["images"], 1)
        run.log.info(f"predicted {summary['images']} images ({summary['skipped']} skipped, {summary['patches']} "
                     f"patches, TTA {'on' if s.run.tta else 'off'}) in {summary['seconds']:.1f}s ({per_image:.2f} "
                     f"s/image), peak memory {summary['peak_memory_mb']:.0f} MB; masks in {folder}")


def _predict_scenes(run: _Run, predictor: Predictor) -> None:
    from dataset.scenes import expand_inputs
    from engine.scenes import SceneOutputs, SceneReading, check_outputs, is_output, predict_scenes, remove_stale_outputs

    s, scenes = run.settings, run.settings.scenes
    folder = s.paths.prediction_path
    paths = expand_inputs(list(scenes.inputs), skip=is_output)
    outputs = SceneOutputs(folder, scenes.output_format, scenes.cog, scenes.save_confidence,
                           scenes.save_probabilities, scenes.quicklook, scenes.skip_existing, s.dataset.classes,
                           vectorize=scenes.vectorize, vector_skip=scenes.vector_skip, simplify=scenes.simplify)
    reading = SceneReading(scenes.bands, scenes.input_range)
    check_outputs(paths, outputs, reading)
    run.output_folder(folder, "prediction_path", lambda: remove_stale_outputs(folder))
    if run.info.is_main:
        run.log.info(f"{len(paths)} input files; outputs in {folder}")
    summary = predict_scenes(predictor, paths, outputs, reading, run.device, run.info, tta=s.run.tta,
                             skip_bad=s.system.skip_bad_images)
    if run.info.is_main:
        megapixels = summary["pixels"] / 1e6
        run.log.info(f"predicted {summary['scenes']} scenes ({megapixels:.1f} megapixels, {summary['patches']} "
                     f"patches, TTA {'on' if s.run.tta else 'off'}; {summary['existing']} already done, "
                     f"{summary['skipped']} skipped) in {summary['seconds']:.1f}s, peak memory "
                     f"{summary['peak_memory_mb']:.0f} MB; outputs in {folder}")


# The inference handlers: each gets a Predictor; running out of memory is translated for all of them in run().
_INFERENCE = {RunKind.EVALUATE: _evaluate, RunKind.PREDICT_SPLIT: _predict, RunKind.PREDICT_SCENES: _predict_scenes}


def run(argv: list[str] | None = None) -> int:
    """One run of the entry script with the command line ``argv``; returns the exit status (0)."""
    s = parse_options(argv)
    training = s.run.training
    if not training:  # inference: freed tensors go back to the system, memory stays flat over a long scene
        fix_mmap_threshold()
    info, device = init_distributed(s.system.device)
    if info.is_main:
        ensure_writable_dir(s.paths.log_dir, "log_path")
    log = setup_logging(info.rank, os.path.join(s.paths.log_dir, "train.log" if training else "run.log"),
                        rename=flag_renamer(build_parser()))
    allow_large_images(s.system.allow_large_images)
    if mode_spec(s.run.mode).two_windows and s.pipeline.context2 == s.pipeline.context:
        log.warning("--context2 equals --context: mode %d's large window is its medium one (the Inria release "
                    "uses 2 and 3)", s.run.mode)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(s.training.seed)  # the initial weights of a fresh model depend on it
    base_training = training and not s.run.refine  # a refinement run trains on top of a frozen model
    # The global model feeds the base only in the modes that read it (a refinement may read it too).
    glo_path = s.paths.glo_path if any(e.setting == "glo_path" for e in mode_spec(s.run.mode).frozen) else None
    model = create_model(
        s.run.mode, s.run.backbone,
        pre_path=s.paths.pre_path, c_path=s.paths.c_path, glo_path=glo_path, c2_path=s.paths.c2_path,
        training=base_training, pretrained=s.training.pretrained, gamma_init=s.training.gamma_init,
        n_class=s.dataset.classes.n_class, correlation=s.dataset.correlation, class_table=s.dataset.classes.record(),
        memory_format=memory_format_for(s.run.backbone, device.type, base_training),
        # Training reads the data set's bands; predicting without a prepared folder, the file's.
        bands=s.dataset.input_bands if training or not s.dataset.input_bands.is_rgb else None,
    ).to(device)
    refinement = _refinement(s, device)
    if s.paths.glo_path is not None and glo_path is None and (refinement is None or refinement.context_net is None):
        log.warning("`glo_path` is not used in mode %d (nor by a refinement); ignored", s.run.mode)

    context = _Run(s, device, info, log)
    if s.run.refine:
        _train_refinement(context, model, refinement)
        return 0
    if training:
        _train(context, model)
        return 0
    cfg = _pipeline(s)
    try:
        _INFERENCE[s.run.kind](context, Predictor(model, cfg, refinement))
    except torch.OutOfMemoryError:
        raise out_of_memory(device, cfg) from None
    return 0


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective operation failing because another torchrun process stopped."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("closed by peer" in text or "reset by peer" in text)


def main() -> None:
    """Run, turning user errors into one ``error:`` line and an exit status (see the module doc)."""
    code = 0
    try:
        with stop_on_signals():  # SIGTERM / SIGHUP stop the run as Ctrl-C does
            code = run(sys.argv[1:])
    except FCtLError as exc:  # also when raised in a DataLoader worker (report_error unwraps it)
        code = report_error(exc, build_parser())
    except KeyboardInterrupt as exc:  # outside training (which raises Interrupted with its checkpoint state)
        signum = signal_of(exc)
        print(f"error: interrupted ({describe_signal(signum)}); files already written are complete, none is "
              f"half-written", file=sys.stderr)
        code = exit_status_of_signal(signum)
    except Exception as exc:
        if not _lost_peer(exc):
            raise
        # Under torchrun, the process that hit the problem printed its own error line; the others only
        # see their all-reduce fail. One line each instead of a traceback per process.
        rank = os.environ.get("RANK", "?")
        print(f"error: [rank {rank}] stopped because another process of this torchrun job stopped (see its "
              f"error line)", file=sys.stderr)
        code = 1
    finally:
        shutdown_distributed()
    sys.exit(code)


if __name__ == "__main__":
    main()
