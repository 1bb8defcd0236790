"""Command-line options of ``train_deep_globe.py``.

Option names follow the original FCtL/GLNet code so its shell scripts and habits carry over; the options
it lacked (paths, device, resume, TTA, ...) are added under plain names. ``check_options`` rejects values
that cannot work before any file is opened, so a typo costs a second, not a day of training.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from models.backbones import BACKBONES
from models.correlation import CORRELATIONS
from models.modes import MODES, mode_spec
from pipeline.contexts import CONTEXTS
from utils.errors import ConfigError, FCtLError, Interrupted, render, user_message

EXIT_USER_ERROR = 2
DATASETS = ("deepglobe", "inria", "custom")
DATASET_NUMBERS = {"1": "deepglobe", "2": "inria"}  # the original code's --dataset values
# What --dataset sets when the option is not given.
DATASET_DEFAULTS = {
    "deepglobe": {"data_path": "data", "correlation": "centred", "context": 3, "save_each_epoch_from": 34},
    "inria": {"data_path": "data_inria", "correlation": "plain", "context": 2, "save_each_epoch_from": 0},
    "custom": {"data_path": "data", "correlation": "centred", "context": 3, "save_each_epoch_from": 34},
}


def exit_status_of_signal(signum: int) -> int:
    """The shell's convention for a run stopped by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + int(signum)


class OptionError(ConfigError):
    """A command-line option value, or a combination of options, that cannot work."""


def flag_renamer(parser: argparse.ArgumentParser | None):
    """Turns a library setting name into the parser's flag for it (``size_p`` -> ``--size_p``);
    names the parser does not have stay as they are."""
    flags = {}
    if parser is not None:
        for action in parser._actions:
            if action.option_strings:
                flags.setdefault(action.dest, action.option_strings[0])
    return lambda name: flags.get(name, name)


def report_error(exc: FCtLError, parser: argparse.ArgumentParser | None = None) -> int:
    """Print ``exc`` as the one ``error: ...`` line on stderr, its settings named by the flags of
    ``parser``; returns the exit status (128 + the signal after an interruption, 2 otherwise)."""
    print(f"error: {render(user_message(exc), flag_renamer(parser))}", file=sys.stderr)
    return exit_status_of_signal(exc.signum) if isinstance(exc, Interrupted) else EXIT_USER_ERROR


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad option is an OptionError: the entry script then prints it as every
    other user error (``error: ...``, exit status 2), after the usage line."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        raise OptionError(message)


def build_parser() -> argparse.ArgumentParser:
    """All options, grouped as a user meets them in ``--help``."""
    p = _Parser(
        prog="train_deep_globe.py",
        description="FCtL for ultra-high-resolution segmentation: train (--train), evaluate a labelled "
        "split (--evaluate) or write test predictions (default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = p.add_argument_group("what to run")
    run.add_argument("--task_name", default="fctl", help="name of the run: checkpoints <task>.*.pth, logs <log_path>/<task>")
    run.add_argument("--mode", type=int, default=1, choices=sorted(MODES),
                     help="; ".join(f"{k} {m.summary}" for k, m in MODES.items()))
    run.add_argument("--train", action="store_true", help="train (otherwise: test, or --evaluate)")
    run.add_argument("--val", action="store_true",
                     help="with --train: validate every --val_every epochs; alone: same as --evaluate --split crossvali")
    run.add_argument("--evaluate", action="store_true", help="score predictions on a labelled split (--split)")
    run.add_argument("--split", default=None,
                     help="split for --evaluate (default crossvali) or test (default test = offical_crossvali)")
    run.add_argument("--dataset", default="deepglobe", choices=list(DATASETS) + list(DATASET_NUMBERS),
                     help="deepglobe (7 land-cover classes; the original's 1), inria (building / background; the "
                          "original's 2; defaults --correlation plain --context 2 --context2 3), or custom with "
                          "--classes")
    run.add_argument("--classes", default=None, metavar="FILE",
                     help="--dataset custom: the class-table JSON (names, colours, the class left out of mIoU); "
                          "see data/classes/deepglobe.json")
    run.add_argument("--correlation", default=None, choices=list(CORRELATIONS),
                     help="correlation of every block: centred (the DeepGlobe release) or plain (the Inria release); "
                          "default: plain for --dataset inria, else centred")
    run.add_argument("--backbone", default="fcn8_vgg16", choices=list(BACKBONES),
                     help="fcn8_vgg16 loads the released checkpoints; fpn_* are the fast GLNet-style backbones")

    paths = p.add_argument_group("paths")
    paths.add_argument("--data_path", default=None,
                       help="folder holding train/ crossvali/ offical_crossvali/ (default: data, or data_inria for "
                            "--dataset inria)")
    paths.add_argument("--model_path", default="saved_models", help="folder of checkpoints (names below are joined to it)")
    paths.add_argument("--log_path", default="runs", help="tensorboard and text logs go to <log_path>/<task_name>")
    paths.add_argument("--prediction_path", default="predictions", help="test mode writes <id>_mask.png here")
    paths.add_argument("--metrics_path", default=None, help="--evaluate JSON (default <log_path>/<task>/metrics_<split>.json)")
    paths.add_argument("--pre_path", default=None, help="weights of the model itself (mode 4 training: the mode-1 'pre' model)")
    paths.add_argument("--c_path", "--glo_path_10", default=None,
                       help="modes 4, 5: the medium (mode-2) model whose encoder gives the medium context (mode 5: "
                            "the x2 model, e.g. the Inria release's B10.epoch.pth)")
    paths.add_argument("--c2_path", "--glo_path_15", default=None,
                       help="mode 5: the x3 mode-2 model whose encoder gives the large-window context (e.g. B15.epoch.pth)")
    paths.add_argument("--glo_path", default=None,
                       help="modes 3/4: the global (mode-0) model whose encoder gives the large context")

    own = p.add_argument_group("your own scenes (test mode)")
    own.add_argument("--input", nargs="+", default=None, metavar="PATH",
                     help="predict these files instead of --data_path/--split: files, folders, glob patterns or .txt "
                          "lists of paths; GeoTIFFs (any raster GDAL reads) are read window by window")
    own.add_argument("--output_format", choices=["png", "tif"], default=None,
                     help="mask format (default: tif for GDAL rasters, keeping their CRS and transform; png for "
                          "JPEG/PNG inputs)")
    own.add_argument("--cog", action="store_true", help="write Cloud-Optimized GeoTIFFs (with overviews)")
    own.add_argument("--save_confidence", action="store_true",
                     help="also write <stem>_confidence: the top-1 softmax probability x 255 (uint8)")
    own.add_argument("--quicklook", action="store_true",
                     help="also write <stem>_preview.png: the scene and the mask over it, side by side, <= 2048 px")
    own.add_argument("--bands", default=None, metavar="R,G,B",
                     help="1-based bands used as RGB (default: the first three; needed for scenes of 1-2 bands)")
    own.add_argument("--input_range", nargs="+", default=None, metavar="LOW,HIGH",
                     help="how non-uint8 pixels map to 0..255: LOW,HIGH for all bands, one pair per band, or "
                          "percentiles pLOW,pHIGH of each band (e.g. p2,p98)")
    own.add_argument("--skip_existing", action="store_true",
                     help="do not predict scenes whose outputs already exist (resume a long batch)")

    geo = p.add_argument_group("patches and contexts")
    geo.add_argument("--size_p", type=int, default=508, help="patch side in pixels")
    geo.add_argument("--size_g", type=int, default=508, help="side of the resized whole image (global view)")
    geo.add_argument("--context", "--context10", type=int, default=None,
                     help="medium context window = context x size_p, centred on the patch (default 3; 2 for --dataset "
                          "inria)")
    geo.add_argument("--context2", "--context15", type=int, default=3,
                     help="mode 5: large context window = context2 x size_p, centred on the patch")
    geo.add_argument("--batch_size", type=int, default=6, help="whole images per iteration (one optimizer step)")
    geo.add_argument("--sub_batch_size", type=int, default=6, help="patches per forward pass")
    tta = geo.add_mutually_exclusive_group()
    tta.add_argument("--tta", dest="tta", action="store_true", default=None,
                     help="8 flip/rotation views summed (default ON in test mode, OFF for --evaluate/--val)")
    tta.add_argument("--no_tta", dest="tta", action="store_false")

    tr = p.add_argument_group("training")
    tr.add_argument("--epochs", type=int, default=50, help="length of the poly schedule (the last epoch)")
    tr.add_argument("--start_epoch", type=int, default=0,
                    help="train epochs start_epoch+1..epochs of the schedule (the Inria release: 50 of 100)")
    tr.add_argument("--lr", type=float, default=5e-5, help="base learning rate of the poly schedule")
    tr.add_argument("--weight_decay", type=float, default=5e-4, help="L2 inside Adam, as the original")
    tr.add_argument("--gamma_init", type=float, default=0.0,
                    help="start of the correlation gates of context modules that start fresh (the original: 0; "
                         "Adam opens a gate by about --lr per step, so short runs need a larger start, see README)")
    tr.add_argument("--val_every", type=int, default=5, help="validate every N epochs (with --val)")
    tr.add_argument("--save_each_epoch_from", type=int, default=None,
                    help="besides every 5th epoch, keep <task>.epoch<E>.pth of every epoch from this one (default 34, "
                         "as the DeepGlobe release; 0 = never, the Inria release's default)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue from <model_path>/<task>.last.pth")
    tr.add_argument("--no_pretrained", action="store_true",
                    help="start the backbone from random weights instead of ImageNet (needed offline)")

    sys_ = p.add_argument_group("system")
    sys_.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    sys_.add_argument("--num_workers", type=int, default=2, help="image-reading worker processes")
    sys_.add_argument("--amp", action="store_true", help="mixed precision autocast (logits merged in float32)")
    sys_.add_argument("--amp_dtype", default="bf16", choices=["bf16", "fp16"])
    sys_.add_argument("--skip_bad_images", action="store_true",
                      help="warn about and skip unreadable images instead of stopping")
    sys_.add_argument("--allow_large_images", action="store_true",
                      help="lift Pillow's decompression-bomb limit (about 89 megapixels) for trusted large scenes")
    sys_.add_argument("--max_images", type=int, default=None, help="use only the first N images of each split (quick runs)")
    return p


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate; raises OptionError with one line on a value that cannot work."""
    args = build_parser().parse_args(argv)
    check_options(args)
    return args


def resolve_checkpoint(model_path: str, name: str | None) -> str | None:
    """Join a checkpoint name to --model_path as the original does; absolute paths pass through."""
    if name is None:
        return None
    return os.path.join(model_path, os.path.expanduser(name))


SCENE_ONLY = ("output_format", "cog", "save_confidence", "quicklook", "bands", "input_range", "skip_existing")


def _check_scene_options(args: argparse.Namespace) -> None:
    from dataset.scenes import InputRange, parse_bands

    if args.input is None:
        given = [name for name in SCENE_ONLY if getattr(args, name) not in (None, False)]
        if given:
            raise OptionError(f"--{given[0]} applies to --input scenes only; add --input PATH")
        return
    if args.train or args.evaluate or args.val:
        raise OptionError("--input predicts unlabelled scenes in test mode; drop --train/--evaluate/--val")
    if args.split is not None:
        raise OptionError("--input replaces --split (and --data_path); drop --split")
    args.bands = None if args.bands is None else parse_bands(args.bands)
    args.input_range = None if args.input_range is None else InputRange.parse(args.input_range)


def _resolve_dataset(args: argparse.Namespace) -> None:
    """--dataset's defaults and class table (``args.class_table``)."""
    from dataset.classes import load_class_table, shipped_table

    args.dataset = DATASET_NUMBERS.get(args.dataset, args.dataset)
    for name, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.dataset == "custom":
        if args.classes is None:
            raise OptionError("--dataset custom needs --classes FILE (a class-table JSON; see data/classes/*.json)")
        args.class_table = load_class_table(args.classes)
    elif args.classes is not None:
        raise OptionError(f"--classes is for --dataset custom; --dataset {args.dataset} has its own table "
                          f"(data/classes/{args.dataset}.json): drop --classes or pass --dataset custom")
    else:
        args.class_table = shipped_table(args.dataset)


def check_options(args: argparse.Namespace) -> None:
    """Reject impossible option combinations early, naming the option and the fix."""
    _resolve_dataset(args)
    positive = ("size_p", "size_g", "batch_size", "sub_batch_size", "epochs", "val_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise OptionError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.num_workers < 0:
        raise OptionError(f"--num_workers must be 0 or more (got {args.num_workers})")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise OptionError(f"--lr must be a positive number (got {args.lr})")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise OptionError(f"--weight_decay must be 0 or a positive number (got {args.weight_decay})")
    if not math.isfinite(args.gamma_init):
        raise OptionError(f"--gamma_init must be a finite number (got {args.gamma_init})")
    for name in ("context", "context2"):
        if getattr(args, name) not in CONTEXTS:
            raise OptionError(f"--{name} {getattr(args, name)} is not supported; use one of {CONTEXTS}")
    if not 0 <= args.start_epoch < args.epochs:
        raise OptionError(f"--start_epoch must be 0 or more and below --epochs {args.epochs} (got {args.start_epoch})")
    if args.save_each_epoch_from < 0:
        raise OptionError(f"--save_each_epoch_from must be 0 (never) or an epoch (got {args.save_each_epoch_from})")
    if args.max_images is not None and args.max_images < 1:
        raise OptionError(f"--max_images must be at least 1 (got {args.max_images})")
    if args.train and args.evaluate:
        raise OptionError("--train and --evaluate exclude each other; validate during training with --val")
    if args.resume and not args.train:
        raise OptionError("--resume only makes sense with --train")
    _check_scene_options(args)
    if not args.train and args.val:
        args.evaluate = True
        args.split = args.split or "crossvali"
    for encoder in reversed(mode_spec(args.mode).frozen):
        if getattr(args, encoder.setting) is not None:
            continue
        if args.train:
            raise OptionError(f"training mode {args.mode} needs --{encoder.setting} (a trained {encoder.role} "
                              f"mode-{encoder.source_mode} model; run {encoder.stage_script} first)")
        raise OptionError(f"mode {args.mode} needs --{encoder.setting} (the {encoder.role} mode-{encoder.source_mode} "
                          f"model, e.g. {encoder.example})")
    if not args.train and args.pre_path is None:
        raise OptionError("testing and --evaluate need --pre_path (the weights to run, e.g. all.epoch.pth)")
