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

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

from dataset.deepglobe import DeepGlobe, first_images, item_bytes
from dataset.io import allow_large_images
from engine.evaluation import evaluate_dataset, format_scores, predict_dataset, write_metrics
from models.backbones import memory_format_for
from models.setup import create_model
from option import (
    OptionError,
    build_parser,
    exit_status_of_signal,
    flag_renamer,
    parse_options,
    report_error,
    resolve_checkpoint,
)
from pipeline.predictor import AMP_DTYPES, PipelineConfig, Predictor, out_of_memory
from utils.distributed import DistInfo, barrier, init_distributed, shutdown_distributed
from utils.errors import FCtLError, describe_signal, signal_of
from utils.files import ensure_writable_dir, remove_stale_temporaries
from utils.logging import SafeWriter, setup_logging
from utils.memory import fix_mmap_threshold
from utils.workers import check_shared_memory, stop_on_signals, worker_init


def _split(args: argparse.Namespace, split: str, labelled: bool):
    """One split of --data_path as the options ask (bad images skipped or not, --max_images)."""
    return first_images(DeepGlobe(args.data_path, split, labelled=labelled, skip_bad=args.skip_bad_images,
                                  classes=args.class_table), args.max_images)


def _pipeline(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(args.size_p, args.size_g, args.context, args.sub_batch_size, args.amp,
                          AMP_DTYPES[args.amp_dtype], args.context2)


def _train(args: argparse.Namespace, model: torch.nn.Module, device: torch.device, info: DistInfo, log) -> None:
    """Build the training run's objects from the options and fit."""
    from torch.utils.data import DataLoader, DistributedSampler

    from dataset.deepglobe import collate_list
    from engine.checkpoints import FIXED_ON_RESUME, CheckpointPolicy, keep_epoch
    from engine.training import Schedule, Trainer
    from utils.loss import FocalLoss

    if info.is_main:
        ensure_writable_dir(args.model_path, "model_path")
    wrapped = model
    if info.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_set = _split(args, "train", labelled=True)
    val_set = _split(args, "crossvali", labelled=True) if args.val else None
    # Each worker prefetches 2 batches (torch's default) of batch_size images.
    check_shared_memory(args.num_workers, 2 * args.num_workers * args.batch_size, item_bytes(train_set))
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=args.seed, drop_last=False)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        collate_fn=collate_list, pin_memory=device.type == "cuda",
                        persistent_workers=args.num_workers > 0, worker_init_fn=worker_init)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    checkpoints = CheckpointPolicy(args.model_path, args.task_name, enabled=info.is_main,
                                   keep=lambda epoch: keep_epoch(epoch, args.save_each_epoch_from))
    stale = checkpoints.remove_stale()
    if stale:
        log.warning(f"removed {len(stale)} temporary files left in {args.model_path} by an interrupted "
                    f"checkpoint write (e.g. {os.path.basename(stale[0])}); the .pth files are complete")
    writer = SafeWriter(os.path.join(args.log_path, args.task_name)) if info.is_main else None
    schedule = Schedule(epochs=args.epochs, lr=args.lr, seed=args.seed, val_every=args.val_every,
                        start_epoch=args.start_epoch)
    trainer = Trainer(wrapped, optimizer, loader, FocalLoss(gamma=3.0), _pipeline(args), schedule, device=device,
                      dist_info=info, checkpoints=checkpoints, val_set=val_set, val_workers=args.num_workers,
                      writer=writer, settings={name: getattr(args, name) for name in FIXED_ON_RESUME},
                      classes=args.class_table)
    trainer.fit(resume=args.resume)


def _evaluate(args: argparse.Namespace, predictor: Predictor, device: torch.device, info: DistInfo, log_dir: str,
              log) -> None:
    split = args.split or "crossvali"
    tta = bool(args.tta)
    metrics_path = args.metrics_path or os.path.join(log_dir, f"metrics_{split}.json")
    if info.is_main:  # fail now, not after scoring the whole split
        folder = os.path.dirname(os.path.abspath(metrics_path))
        if os.path.isdir(metrics_path):
            raise OptionError(f"--metrics_path {metrics_path} is a folder; give the path of a .json file")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise OptionError(f"--metrics_path {metrics_path} lies under {folder}, which is a file, not a folder; "
                              f"give a path in a folder")
        ensure_writable_dir(folder, "metrics_path")
    dataset = _split(args, split, labelled=True)
    started = time.time()
    try:
        scores, _ = evaluate_dataset(predictor, dataset, device, info, tta=tta, num_workers=args.num_workers,
                                     classes=args.class_table)
    except torch.OutOfMemoryError:
        raise out_of_memory(device, predictor.cfg) from None
    if info.is_main:
        scores.update(split=split, mode=args.mode, backbone=args.backbone, tta=tta, images=len(dataset),
                      dataset=args.dataset, classes=list(args.class_table.names))
        write_metrics(metrics_path, scores)
        log.info(format_scores(scores, args.class_table))
        log.info(f"{len(dataset)} images ({scores['skipped']} skipped) in {time.time() - started:.1f}s; "
                 f"metrics written to {metrics_path}")


def _predict(args: argparse.Namespace, predictor: Predictor, device: torch.device, info: DistInfo, log) -> None:
    split = args.split or "test"
    tta = True if args.tta is None else args.tta
    dataset = _split(args, split, labelled=False)
    ensure_writable_dir(args.prediction_path, "prediction_path")
    if info.is_main:  # leftovers of a killed earlier run; before any process starts writing
        stale = remove_stale_temporaries(args.prediction_path, "*_mask.png")
        if stale:
            log.warning(f"removed {len(stale)} temporary files left in {args.prediction_path} by an interrupted run")
    barrier()
    try:
        summary = predict_dataset(predictor, dataset, args.prediction_path, device, info, tta=tta,
                                  num_workers=args.num_workers, classes=args.class_table)
    except torch.OutOfMemoryError:
        raise out_of_memory(device, predictor.cfg) from None
    if info.is_main:
        per_image = summary["seconds"] / max(summary["images"], 1)
        log.info(f"predicted {summary['images']} images ({summary['skipped']} skipped, {summary['patches']} patches, "
                 f"TTA {'on' if tta else 'off'}) in {summary['seconds']:.1f}s ({per_image:.2f} s/image), "
                 f"peak memory {summary['peak_memory_mb']:.0f} MB; masks in {args.prediction_path}")


def _predict_scenes(args: argparse.Namespace, predictor: Predictor, device: torch.device, info: DistInfo, log) -> None:
    from dataset.scenes import expand_inputs
    from engine.scenes import SceneOutputs, SceneReading, check_outputs, predict_scenes, remove_stale_outputs

    tta = True if args.tta is None else args.tta
    paths = expand_inputs(args.input)
    outputs = SceneOutputs(args.prediction_path, args.output_format, args.cog, args.save_confidence, args.quicklook,
                           args.skip_existing, args.class_table)
    reading = SceneReading(args.bands, args.input_range)
    check_outputs(paths, outputs, reading)
    ensure_writable_dir(args.prediction_path, "prediction_path")
    if info.is_main:
        stale = remove_stale_outputs(args.prediction_path)
        if stale:
            log.warning(f"removed {len(stale)} temporary files left in {args.prediction_path} by an interrupted run")
        log.info(f"{len(paths)} input files; outputs in {args.prediction_path}")
    barrier()
    try:
        summary = predict_scenes(predictor, paths, outputs, reading, device, info, tta=tta,
                                 skip_bad=args.skip_bad_images)
    except torch.OutOfMemoryError:
        raise out_of_memory(device, predictor.cfg) from None
    if info.is_main:
        megapixels = summary["pixels"] / 1e6
        log.info(f"predicted {summary['scenes']} scenes ({megapixels:.1f} megapixels, {summary['patches']} patches, "
                 f"TTA {'on' if tta else 'off'}; {summary['existing']} already done, {summary['skipped']} skipped) in "
                 f"{summary['seconds']:.1f}s, peak memory {summary['peak_memory_mb']:.0f} MB; outputs in "
                 f"{args.prediction_path}")


def run(argv: list[str] | None = None) -> int:
    args = parse_options(argv)
    if not args.train:  # inference: freed tensors go back to the system, memory stays flat over a long scene
        fix_mmap_threshold()
    info, device = init_distributed(args.device)
    log_dir = os.path.join(args.log_path, args.task_name)
    if info.is_main:
        ensure_writable_dir(log_dir, "log_path")
    log = setup_logging(info.rank, os.path.join(log_dir, "train.log" if args.train else "run.log"),
                        rename=flag_renamer(build_parser()))
    allow_large_images(args.allow_large_images)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(args.seed)  # the initial weights of a fresh model depend on it
    model = create_model(
        args.mode, args.backbone,
        pre_path=resolve_checkpoint(args.model_path, args.pre_path),
        c_path=resolve_checkpoint(args.model_path, args.c_path),
        glo_path=resolve_checkpoint(args.model_path, args.glo_path),
        c2_path=resolve_checkpoint(args.model_path, args.c2_path),
        training=args.train, pretrained=not args.no_pretrained, gamma_init=args.gamma_init,
        n_class=args.class_table.n_class, correlation=args.correlation, class_table=args.class_table.record(),
        memory_format=memory_format_for(args.backbone, device.type, args.train),
    ).to(device)

    if args.train:
        _train(args, model, device, info, log)
    elif args.evaluate:
        _evaluate(args, Predictor(model, _pipeline(args)), device, info, log_dir, log)
    elif args.input is not None:
        _predict_scenes(args, Predictor(model, _pipeline(args)), device, info, log)
    else:
        _predict(args, Predictor(model, _pipeline(args)), device, info, log)
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
