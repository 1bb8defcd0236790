"""Command-line options of ``train_deep_globe.py``, and the frozen ``Settings`` made of them.

Option names follow the original FCtL/GLNet code so its shell scripts and habits carry over; the options
it lacked (paths, device, resume, TTA, ...) are added under plain names. ``parse_options`` turns the
command line into ``Settings`` once, every default and derived value resolved there, and rejects values
that cannot work before any file is opened, so a typo costs a second, not a day of training.
"""

from __future__ import annotations

import argparse
import enum
import functools
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from models.backbones import BACKBONES
from models.bands import RGB, InputBands
from models.correlation import CORRELATIONS
from models.modes import MODES, mode_spec
from pipeline.config import MERGES
from pipeline.contexts import CONTEXTS
from utils.errors import ConfigError, FCtLError, Interrupted, render, user_message

if TYPE_CHECKING:
    import torch

    from dataset.classes import ClassTable
    from dataset.scenes import InputRange

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


def flag_renamer(parser: argparse.ArgumentParser | None) -> Callable[[str], str]:
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
    other user error (``error: ...``, exit status 2), after the usage line; and a value such as
    ``-1020,1020`` (a negative number, alone or in a comma-separated list, as ``--input_range`` takes)
    is a value, not an unknown option."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse tells a negative number from an option by this pattern (no option here looks like one).
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)(,-?(\d+\.?\d*|\.\d+))*$")

    def error(self, message: str):
        self.print_usage(sys.stderr)
        raise OptionError(message)


# --- the parser, one function per group of --help ------------------------------------------------------

def _add_run_options(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("what to run")
    run.add_argument("--task_name", default="fctl", help="name of the run: checkpoints <task>.*.pth, logs <log_path>/<task>")
    run.add_argument("--mode", type=int, default=1, choices=sorted(MODES),
                     help="; ".join(f"{k} {m.summary}" for k, m in MODES.items()))
    run.add_argument("--train", action="store_true", help="train (otherwise: test, or --evaluate)")
    run.add_argument("--val", action="store_true",
                     help="with --train: validate every --val_every epochs; alone: same as --evaluate --split crossvali")
    run.add_argument("--evaluate", action="store_true", help="score predictions on a labelled split (--split)")
    run.add_argument("--refine", action="store_true",
                     help="with --train: train the refinement stage (our contextual refinement of the stitched "
                          "prediction, after the paper's CSRN) for the frozen model of --mode/--pre_path; with "
                          "--glo_path it also reads that global model's prediction (see train_refine.sh)")
    run.add_argument("--split", default=None,
                     help="split for --evaluate (default crossvali) or test (default test = offical_crossvali)")
    run.add_argument("--boundary_px", type=int, default=3,
                     help="--evaluate: Boundary IoU counts the pixels within this distance of a class border")
    run.add_argument("--dataset", default=None, choices=list(DATASETS) + list(DATASET_NUMBERS),
                     help="deepglobe (7 land-cover classes; the original's 1), inria (building / background; the "
                          "original's 2; defaults --correlation plain --context 2 --context2 3), or custom with "
                          "--classes or a --data_path from tools.prepare_scenes (default: custom when --data_path "
                          "holds a dataset.json, else deepglobe)")
    run.add_argument("--classes", default=None, metavar="FILE",
                     help="--dataset custom: the class-table JSON (names, colours, the class left out of mIoU); "
                          "see data/classes/deepglobe.json")
    run.add_argument("--correlation", default=None, choices=list(CORRELATIONS),
                     help="correlation of every block: centred (the DeepGlobe release) or plain (the Inria release); "
                          "default: plain for --dataset inria, else centred")
    run.add_argument("--backbone", default="fcn8_vgg16", choices=list(BACKBONES),
                     help="fcn8_vgg16 loads the released checkpoints; fpn_* are the fast GLNet-style backbones")


def _add_path_options(p: argparse.ArgumentParser) -> None:
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
                       help="modes 3/4: the global (mode-0) model whose encoder gives the large context; with "
                            "--refine/--refine_path also the refinement's global context")
    paths.add_argument("--refine_context", default=None, choices=["global", "none"],
                       help="--refine: what the refinement reads besides the image and the merged prediction: the "
                            "global model of --glo_path (default when given) or nothing (default without it)")
    paths.add_argument("--refine_path", default=None,
                       help="a refinement checkpoint (trained with --refine) applied to the merged prediction; with "
                            "--refine: the refinement to start from")


def _add_scene_options(p: argparse.ArgumentParser) -> None:
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
    own.add_argument("--save_probabilities", action="store_true",
                     help="also write <stem>_probabilities.tif: one uint8 band per class, softmax probability x 255 "
                          "(band descriptions: the class names)")
    own.add_argument("--vectorize", choices=["gpkg", "geojson", "fgb"], default=None,
                     help="also write <stem>_mask.<gpkg|geojson|fgb>: one polygon per connected region of each class "
                          "(attributes class_index, class_name, area in CRS units, mean_confidence), in the scene's "
                          "CRS, nodata left out")
    own.add_argument("--vector_skip", choices=["unscored"], default=None,
                     help="with --vectorize: leave the class table's unscored class out of the polygons")
    own.add_argument("--simplify", type=float, default=None, metavar="TOL",
                     help="with --vectorize: simplify polygons to this tolerance in CRS units (default 0: exact pixel "
                          "edges)")
    own.add_argument("--quicklook", action="store_true",
                     help="also write <stem>_preview.png: the scene and the mask over it, side by side, <= 2048 px")
    own.add_argument("--bands", default=None, metavar="R,G,B",
                     help="1-based bands used as RGB (default: the first three; needed for scenes of 1-2 bands); a "
                          "model of N bands takes N numbers, R, G, B first (default: the first N)")
    own.add_argument("--input_range", nargs="+", default=None, metavar="LOW,HIGH",
                     help="how non-uint8 pixels map to 0..255: LOW,HIGH for all bands, one pair per band, or "
                          "percentiles pLOW,pHIGH of each band (e.g. p2,p98)")
    own.add_argument("--skip_existing", action="store_true",
                     help="do not predict scenes whose outputs already exist (resume a long batch)")


def _add_geometry_options(p: argparse.ArgumentParser) -> None:
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
    geo.add_argument("--merge", default="sum", choices=list(MERGES),
                     help="how overlapping patch logits are merged: sum (the released rule) or hann (each patch "
                          "weighted by a window falling towards its edges, weighted mean; no effect in mode 0)")


def _add_training_options(p: argparse.ArgumentParser) -> None:
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
    tr.add_argument("--refine_crop", type=int, default=256,
                    help="--refine: side of the windows the refinement trains on (each read with its halo)")
    tr.add_argument("--refine_crops", type=int, default=8, help="--refine: windows drawn from each training image")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue from <model_path>/<task>.last.pth")
    tr.add_argument("--no_pretrained", action="store_true",
                    help="start the backbone from random weights instead of ImageNet (needed offline)")


def _add_system_options(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """All options, grouped as a user meets them in ``--help``."""
    p = _Parser(
        prog="train_deep_globe.py",
        description="FCtL for ultra-high-resolution segmentation: train (--train), evaluate a labelled "
        "split (--evaluate) or write test predictions (default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for add_group in (_add_run_options, _add_path_options, _add_scene_options, _add_geometry_options,
                      _add_training_options, _add_system_options):
        add_group(p)
    return p


# --- the settings --------------------------------------------------------------------------------------

class RunKind(enum.Enum):
    """What a run does: exactly one of these."""

    TRAIN = "train"
    EVALUATE = "evaluate"  # score a labelled split (--evaluate, or --val alone)
    PREDICT_SPLIT = "predict"  # write the masks of a split (test mode)
    PREDICT_SCENES = "predict scenes"  # write the masks of --input scenes


@dataclass(frozen=True)
class RunSettings:
    """What to run. ``split`` is the split read by inference on a split (--split, default crossvali for an
    evaluation and test for predictions), None otherwise; ``tta`` says whether inference sums the 8
    views (--tta/--no_tta, default on for predictions, off for an evaluation; False when training);
    ``boundary_px`` is the distance of an evaluation's Boundary IoU in pixels (--boundary_px)."""

    task_name: str
    kind: RunKind
    mode: int
    backbone: str
    split: str | None
    tta: bool
    boundary_px: int
    refine: bool = False  # train the refinement stage (--refine with --train)

    @property
    def training(self) -> bool:
        return self.kind is RunKind.TRAIN


@dataclass(frozen=True)
class DatasetSettings:
    """The data set's name (deepglobe, inria or custom; the original's numbers resolved), its class
    table (shipped, read from --classes or from a prepared folder's dataset.json), the correlation of
    the model's blocks, and the bands its images hold (RGB, or those of a prepared folder)."""

    name: str
    classes: ClassTable
    correlation: str
    input_bands: InputBands = RGB


@dataclass(frozen=True)
class PathSettings:
    """Where things are read and written. ``log_dir`` is <log_path>/<task_name>; ``metrics_path`` is
    the evaluation's JSON (default <log_dir>/metrics_<split>.json), None when the run is no evaluation;
    the checkpoints (``pre_path`` ...) are joined to ``model_path`` (absolute ones kept), None when not given."""

    data_path: str
    model_path: str
    log_dir: str
    prediction_path: str
    metrics_path: str | None
    pre_path: str | None
    c_path: str | None
    glo_path: str | None
    c2_path: str | None
    refine_path: str | None = None
    refine_context: str = "none"  # what a refinement trained by this run reads: "global" (glo_path) or "none"


@dataclass(frozen=True)
class SceneSettings:
    """Scenes of your own (--input): the paths as given (expanded when read) and how they are read and
    written; ``bands`` and ``input_range`` parsed."""

    inputs: tuple[str, ...]
    output_format: str | None
    cog: bool
    save_confidence: bool
    save_probabilities: bool
    quicklook: bool
    vectorize: str | None
    vector_skip: tuple[int, ...]  # class indices
    simplify: float
    bands: tuple[int, ...] | None
    input_range: InputRange | None
    skip_existing: bool


@dataclass(frozen=True)
class PipelineSettings:
    """The patch pipeline's geometry, precision and merge rule (``context`` defaulted by the data set;
    ``amp_dtype`` the torch dtype of --amp_dtype)."""

    size_p: int
    size_g: int
    context: int
    context2: int
    sub_batch_size: int
    amp: bool
    amp_dtype: torch.dtype
    merge: str


@dataclass(frozen=True)
class TrainingSettings:
    """The schedule and the start of training; ``validate`` is --val with --train, ``pretrained`` the
    opposite of --no_pretrained, ``save_each_epoch_from`` defaulted by the data set. ``seed`` also
    seeds the initial weights of any run."""

    batch_size: int
    epochs: int
    start_epoch: int
    lr: float
    weight_decay: float
    gamma_init: float
    validate: bool
    val_every: int
    save_each_epoch_from: int
    seed: int
    resume: bool
    pretrained: bool
    refine_crop: int = 256
    refine_crops: int = 8


@dataclass(frozen=True)
class SystemSettings:
    """Device, workers and the handling of images (``device`` None: cuda when available)."""

    device: str | None
    num_workers: int
    skip_bad_images: bool
    allow_large_images: bool
    max_images: int | None


@dataclass(frozen=True)
class Settings:
    """Everything a run of ``train_deep_globe.py`` needs, built once by ``parse_options``; ``scenes``
    is set exactly when ``run.kind`` is PREDICT_SCENES. Field names are unique across the groups and
    equal the library's setting names (``size_p``, ``seed``, ...)."""

    run: RunSettings
    dataset: DatasetSettings
    paths: PathSettings
    pipeline: PipelineSettings
    training: TrainingSettings
    system: SystemSettings
    scenes: SceneSettings | None

    def value(self, name: str) -> Any:
        """The setting called ``name`` in whichever group holds it; KeyError when none does."""
        for group in (self.run, self.dataset, self.paths, self.pipeline, self.training, self.system, self.scenes):
            if group is not None and name in {f.name for f in fields(group)}:
                return getattr(group, name)
        raise KeyError(name)


def parse_options(argv: Sequence[str] | None = None) -> Settings:
    """The settings of the command line ``argv`` (default: ``sys.argv[1:]``); OptionError (or the
    ConfigError of an unreadable --classes table) with one line on a value that cannot work."""
    return build_settings(build_parser().parse_args(argv))


def build_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``args`` as ``build_parser`` parses them (``args`` is not changed): defaults and
    derived values resolved, impossible values and combinations rejected with an OptionError naming
    the option and the fix."""
    dataset = _dataset_settings(args)
    defaults = DATASET_DEFAULTS[dataset.name]

    def given(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    pipeline = _pipeline_settings(args, context=given("context"))
    training = _training_settings(args, save_each_epoch_from=given("save_each_epoch_from"))
    system = SystemSettings(device=args.device, num_workers=args.num_workers, skip_bad_images=args.skip_bad_images,
                            allow_large_images=args.allow_large_images, max_images=args.max_images)
    _check_numbers(pipeline, training, system)
    if mode_spec(args.mode).two_windows and pipeline.context2 < pipeline.context:
        raise OptionError(f"mode {args.mode} reads a medium window of --context {pipeline.context} x size_p and a large "
                          f"one of --context2 {pipeline.context2} x size_p: the large window must not be the smaller; "
                          f"raise --context2 or lower --context")
    kind = _run_kind(args)
    scenes = _scene_settings(args, dataset.classes)
    _check_checkpoints(args, kind)
    split = {RunKind.EVALUATE: args.split or "crossvali", RunKind.PREDICT_SPLIT: args.split or "test"}.get(kind)
    predicting = kind in (RunKind.PREDICT_SPLIT, RunKind.PREDICT_SCENES)
    tta = kind is not RunKind.TRAIN and (predicting if args.tta is None else args.tta)
    if args.boundary_px < 1:
        raise OptionError(f"--boundary_px must be at least 1 (got {args.boundary_px})")
    _check_refinement(args, kind)
    run = RunSettings(task_name=args.task_name, kind=kind, mode=args.mode, backbone=args.backbone, split=split,
                      tta=tta, boundary_px=args.boundary_px, refine=args.refine)
    log_dir = os.path.join(args.log_path, args.task_name)
    metrics_path = None
    if kind is RunKind.EVALUATE:
        metrics_path = args.metrics_path or os.path.join(log_dir, f"metrics_{split}.json")
    checkpoint = functools.partial(_checkpoint_path, args.model_path)
    paths = PathSettings(data_path=given("data_path"), model_path=args.model_path, log_dir=log_dir,
                         prediction_path=args.prediction_path, metrics_path=metrics_path,
                         pre_path=checkpoint(args.pre_path), c_path=checkpoint(args.c_path),
                         glo_path=checkpoint(args.glo_path), c2_path=checkpoint(args.c2_path),
                         refine_path=checkpoint(args.refine_path),
                         refine_context=args.refine_context or ("none" if args.glo_path is None else "global"))
    return Settings(run=run, dataset=dataset, paths=paths, pipeline=pipeline, training=training, system=system,
                    scenes=scenes)


@functools.cache
def _shipped_table(name: str) -> ClassTable:
    """A shipped class table, read once per process (so that equal options give equal settings)."""
    from dataset.classes import shipped_table

    return shipped_table(name)


def _dataset_settings(args: argparse.Namespace) -> DatasetSettings:
    from dataset.classes import load_class_table
    from dataset.prepared import load_prepared

    if args.data_path and args.input is not None and not os.path.isdir(args.data_path):
        # With --input the data path only brings a prepared folder's classes and bands: a typo would
        # silently fall back to DeepGlobe's.
        raise OptionError(f"--data_path {args.data_path} does not exist; with --input it names a folder prepared by "
                          f"tools.prepare_scenes (for its classes and bands): correct it or leave it out")
    prepared = load_prepared(args.data_path) if args.data_path else None
    name = DATASET_NUMBERS.get(args.dataset, args.dataset) or ("custom" if prepared is not None else "deepglobe")
    bands = RGB
    if prepared is not None and prepared.bands != 3 and name == "custom":
        bands = InputBands.of(prepared.bands, prepared.mean[3:], prepared.std[3:])
    if name == "custom":
        if args.classes is not None:
            classes = load_class_table(args.classes)
        elif prepared is not None:
            classes = prepared.classes
        else:
            raise OptionError("--dataset custom needs --classes FILE (a class-table JSON; see data/classes/*.json), or "
                              "a --data_path prepared by python -m tools.prepare_scenes (its dataset.json)")
    elif args.classes is not None:
        raise OptionError(f"--classes is for --dataset custom; --dataset {name} has its own table "
                          f"(data/classes/{name}.json): drop --classes or pass --dataset custom")
    else:
        classes = _shipped_table(name)
    correlation = args.correlation or DATASET_DEFAULTS[name]["correlation"]
    return DatasetSettings(name=name, classes=classes, correlation=correlation, input_bands=bands)


def _pipeline_settings(args: argparse.Namespace, context: int) -> PipelineSettings:
    from pipeline.config import AMP_DTYPES

    return PipelineSettings(size_p=args.size_p, size_g=args.size_g, context=context, context2=args.context2,
                            sub_batch_size=args.sub_batch_size, amp=args.amp, amp_dtype=AMP_DTYPES[args.amp_dtype],
                            merge=args.merge)


def _training_settings(args: argparse.Namespace, save_each_epoch_from: int) -> TrainingSettings:
    return TrainingSettings(batch_size=args.batch_size, epochs=args.epochs, start_epoch=args.start_epoch, lr=args.lr,
                            weight_decay=args.weight_decay, gamma_init=args.gamma_init,
                            validate=args.train and args.val, val_every=args.val_every,
                            save_each_epoch_from=save_each_epoch_from, seed=args.seed, resume=args.resume,
                            pretrained=not args.no_pretrained, refine_crop=args.refine_crop,
                            refine_crops=args.refine_crops)


def _check_numbers(pipeline: PipelineSettings, training: TrainingSettings, system: SystemSettings) -> None:
    """Values out of their range, each named by its option."""
    positive = {"size_p": pipeline.size_p, "size_g": pipeline.size_g, "batch_size": training.batch_size,
                "sub_batch_size": pipeline.sub_batch_size, "epochs": training.epochs, "val_every": training.val_every,
                "refine_crop": training.refine_crop, "refine_crops": training.refine_crops}
    for name, value in positive.items():
        if value < 1:
            raise OptionError(f"--{name} must be at least 1 (got {value})")
    if system.num_workers < 0:
        raise OptionError(f"--num_workers must be 0 or more (got {system.num_workers})")
    if not (math.isfinite(training.lr) and training.lr > 0):
        raise OptionError(f"--lr must be a positive number (got {training.lr})")
    if not (math.isfinite(training.weight_decay) and training.weight_decay >= 0):
        raise OptionError(f"--weight_decay must be 0 or a positive number (got {training.weight_decay})")
    if not math.isfinite(training.gamma_init):
        raise OptionError(f"--gamma_init must be a finite number (got {training.gamma_init})")
    for name, value in (("context", pipeline.context), ("context2", pipeline.context2)):
        if value not in CONTEXTS:
            raise OptionError(f"--{name} {value} is not supported; use one of {CONTEXTS}")
    if not 0 <= training.start_epoch < training.epochs:
        raise OptionError(f"--start_epoch must be 0 or more and below --epochs {training.epochs} "
                          f"(got {training.start_epoch})")
    if training.save_each_epoch_from < 0:
        raise OptionError(f"--save_each_epoch_from must be 0 (never) or an epoch (got {training.save_each_epoch_from})")
    if system.max_images is not None and system.max_images < 1:
        raise OptionError(f"--max_images must be at least 1 (got {system.max_images})")


def _run_kind(args: argparse.Namespace) -> RunKind:
    """--train, --evaluate, --val alone (an evaluation, of crossvali unless --split) or --input; else
    predictions of a split."""
    if args.train and args.evaluate:
        raise OptionError("--train and --evaluate exclude each other; validate during training with --val")
    if args.resume and not args.train:
        raise OptionError("--resume only makes sense with --train")
    if args.train:
        return RunKind.TRAIN
    if args.input is not None:
        return RunKind.PREDICT_SCENES
    if args.evaluate or args.val:
        return RunKind.EVALUATE
    return RunKind.PREDICT_SPLIT


SCENE_ONLY = ("output_format", "cog", "save_confidence", "save_probabilities", "quicklook", "bands", "input_range",
              "skip_existing", "vectorize", "vector_skip", "simplify")


def _vector_options(args: argparse.Namespace, classes: ClassTable) -> tuple[tuple[int, ...], float]:
    """(class indices left out of the polygons, simplification tolerance) of --vectorize."""
    if args.vectorize is None:
        for name in ("vector_skip", "simplify"):
            if getattr(args, name) is not None:
                raise OptionError(f"--{name} applies to --vectorize; add --vectorize gpkg|geojson|fgb")
        return (), 0.0
    tolerance = 0.0 if args.simplify is None else args.simplify
    if not math.isfinite(tolerance) or tolerance < 0:
        raise OptionError(f"--simplify {args.simplify} must be a tolerance of 0 or more, in the scene's CRS units")
    skip: tuple[int, ...] = ()
    if args.vector_skip == "unscored":
        if classes.unscored is None:
            raise OptionError(f"--vector_skip unscored: the class table {classes.name} has no unscored class; drop "
                              f"--vector_skip")
        skip = (classes.unscored,)
    return skip, tolerance


def _scene_settings(args: argparse.Namespace, classes: ClassTable) -> SceneSettings | None:
    """The --input options, None without --input (where the other scene options are refused)."""
    from dataset.scenes import InputRange, parse_bands

    if args.input is None:
        given = [name for name in SCENE_ONLY if getattr(args, name) not in (None, False)]
        if given:
            raise OptionError(f"--{given[0]} applies to --input scenes only; add --input PATH")
        return None
    if args.train or args.evaluate or args.val:
        raise OptionError("--input predicts unlabelled scenes in test mode; drop --train/--evaluate/--val")
    if args.split is not None:
        raise OptionError("--input replaces --split (and --data_path); drop --split")
    if args.max_images is not None:
        raise OptionError("--max_images applies to the images of a split; with --input name the scenes to predict")
    vector_skip, simplify = _vector_options(args, classes)
    return SceneSettings(inputs=tuple(args.input), output_format=args.output_format, cog=args.cog,
                         save_confidence=args.save_confidence, save_probabilities=args.save_probabilities,
                         quicklook=args.quicklook, vectorize=args.vectorize,
                         vector_skip=vector_skip, simplify=simplify,
                         bands=None if args.bands is None else parse_bands(args.bands),
                         input_range=None if args.input_range is None else InputRange.parse(args.input_range),
                         skip_existing=args.skip_existing)


def _check_checkpoints(args: argparse.Namespace, kind: RunKind) -> None:
    """The models that the mode's frozen encoders come from, and the weights that inference runs."""
    for encoder in reversed(mode_spec(args.mode).frozen):
        if getattr(args, encoder.setting) is not None:
            continue
        if kind is RunKind.TRAIN:
            raise OptionError(f"training mode {args.mode} needs --{encoder.setting} (a trained {encoder.role} "
                              f"mode-{encoder.source_mode} model; run {encoder.stage_script} first)")
        raise OptionError(f"mode {args.mode} needs --{encoder.setting} (the {encoder.role} mode-{encoder.source_mode} "
                          f"model, e.g. {encoder.example})")
    if kind is not RunKind.TRAIN and args.pre_path is None:
        raise OptionError("testing and --evaluate need --pre_path (the weights to run, e.g. all.epoch.pth)")


def _check_refinement(args: argparse.Namespace, kind: RunKind) -> None:
    """--refine trains a refinement for a trained patch model; --refine_path applies one to a patch model."""
    if args.refine and kind is not RunKind.TRAIN:
        raise OptionError("--refine trains the refinement stage: add --train (apply a trained refinement with "
                          "--refine_path)")
    if (args.refine or args.refine_path is not None) and mode_spec(args.mode).whole_image:
        flag = "--refine" if args.refine else "--refine_path"
        raise OptionError(f"{flag}: mode {args.mode} predicts the whole image at once, there are no merged patches to "
                          f"refine; use the patch model's --mode (e.g. 4)")
    if args.refine and args.pre_path is None:
        raise OptionError("--refine needs the trained model it refines as --pre_path (e.g. all.epoch.pth)")
    if args.refine_context is not None and not args.refine:
        raise OptionError("--refine_context chooses what a refinement trained with --refine reads; a trained one "
                          "(--refine_path) reads what it was trained with")
    if args.refine_context == "global" and args.glo_path is None:
        raise OptionError("--refine_context global reads the global (mode-0) model: give it as --glo_path")


def _checkpoint_path(model_path: str, name: str | None) -> str | None:
    """Join a checkpoint name to --model_path as the original does; absolute paths pass through."""
    if name is None:
        return None
    return os.path.join(model_path, os.path.expanduser(name))
