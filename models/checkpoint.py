"""Reading the released FCtL checkpoints and writing our own, compact ones.

Released files (DeepGlobe: ``all.epoch.pth``, ``medium.epoch.pth``, ``global.epoch.pth``; Inria:
``all.epoch.pth``, ``B10.epoch.pth``, ``B15.epoch.pth``) are plain state dicts saved from nn.DataParallel:
every key starts with ``module.``, the VGG layers appear twice (``vgg.features.N`` and the aliases
``pool3.i`` / ``pool4.i`` / ``pool5.i``, mode 2 also ``big_pool*``; aliases share one tensor) and VGG's
unused classifier (123.6M parameters) rides along. They are untrusted pickles, so they are opened
with ``weights_only=True``, and memory-mapped so that the classifier is never read.

Naming: inside the code a parameter is called by its FCtLNet name (``backbone.vgg.features.0.weight``,
``fusion.in_1.weight``, ``local.gamma``); its released name is ``module.`` + that name with a leading
``backbone.`` or ``fusion.`` removed (``module.vgg.features.0.weight``, ``module.in_1.weight``).
The Inria release keeps its three correlations and the fusion in one module, ``big_attention``:
``big_attention.conv_query`` (no suffix) is the medium branch (our ``big``), ``..._1`` the large one
(``large``), ``..._2`` the self one (``local``), ``big_attention.in_1``/``trans``/``out_1`` the fusion
(``INRIA_BLOCK`` below); a file holding ``big_attention`` is read as that release's. Its mode-2 files
(B10, B15) hold the whole block, of which only the medium branch is used, and the ``big_pool*``
aliases, which its mode-5 file (all) lacks: that is how the mode of a released Inria file is told.

Our files use the DeepGlobe release's naming (so the original code can load our DeepGlobe models by
name), hold no aliases, no classifier and no frozen encoders, and carry ``{"backbone", "mode",
"n_class", "correlation", "classes", "format_version"}`` under the key ``_fctl`` (``classes``: the
class table the model was trained for, or None). A training-state file is a dict whose ``model``
entry is such a state dict.
"""

import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from models.bands import InputBands
from models.fctl import FCtLNet
from models.interfaces import Backbone
from models.modes import MODES
from utils.distributed import unwrap
from utils.errors import CheckpointError
from utils.files import atomic_open
from utils.memory import release_file_pages

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_KEY = "_fctl"
_STRIPPED_PREFIXES = ("backbone.", "fusion.")
_OWN_GROUPS = ("backbone", "fusion", "local", "medium", "large", "big", "context_encoder", "global_encoder",
               "context2_encoder")
CORRELATION_BLOCKS = ("big", "local", "medium", "large")
# The Inria release's ``big_attention`` names -> ours (see the module doc).
INRIA_BLOCK = re.compile(r"big_attention\.(?:(gamma|conv_query|conv_key|conv_value)(_1|_2)?|(in_\d+|trans|out_\d+))(.*)")
_INRIA_BRANCH = {None: "big", "_1": "large", "_2": "local"}
RELEASE_CORRELATION = {"deepglobe": "centred", "inria": "plain"}
_CLASS_LAYERS = ("backbone.output.6.", "backbone.adj_pool3.", "backbone.adj_pool4.", "backbone.up_")  # FCN8's
_FUSION_NAME = re.compile(r"(?:in|out)_\d+|trans")
_ALIAS = re.compile(r"(?:big_)?pool([345])\.(\d+)\.(.+)")
_ALIAS_OFFSET = {"3": 0, "4": 17, "5": 24}
_CLASSIFIER = ("vgg.classifier.", "backbone.vgg.classifier.")


@dataclass
class LoadReport:
    """What ``load_weights`` did. Names are FCtLNet names (frozen encoders: ``backbone.`` + own name).

    loaded: copied into the module; missing: the module's tensors the file lacked (left as initialised);
    unexpected: file tensors the module has no place for; ignored: file keys dropped on reading (VGG's
    classifier). The ``*_groups`` fields name the affected module groups (e.g. ``local``, ``fusion``).
    """

    what: str
    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing_groups: list[str] = field(default_factory=list)
    unexpected_groups: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # the file precision of each tensor converted on load

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"{self.what}: loaded {len(self.loaded)} tensors from {self.path}"]
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} (VGG classifier, unused)")
        if self.unexpected:
            parts.append(f"unused {len(self.unexpected)} ({', '.join(self.unexpected_groups)})")
        if self.missing:
            parts.append(f"starting fresh: {', '.join(self.missing_groups)}")
        if self.converted:
            parts.append(f"converted {len(self.converted)} from {'/'.join(sorted(set(self.converted)))} to float32")
        return "; ".join(parts)


def released_name(name: str) -> str:
    """FCtLNet parameter name -> released checkpoint key."""
    for prefix in _STRIPPED_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return "module." + name


def _our_name(name: str) -> str:
    """Released name without ``module.`` (or an FCtLNet name) -> FCtLNet name."""
    first = name.split(".", 1)[0]
    if first in _OWN_GROUPS:
        return name
    if _FUSION_NAME.fullmatch(first):
        return "fusion." + name
    return "backbone." + name


def _from_inria(name: str) -> str | None:
    """An Inria release name without ``module.`` -> our FCtLNet name (None when it is not a block name)."""
    match = INRIA_BLOCK.fullmatch(name)
    if match is None:
        return None
    if match[3] is not None:
        return f"fusion.{match[3]}{match[4]}"
    return f"{_INRIA_BRANCH[match[2]]}.{match[1]}{match[4]}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_file(path: str) -> tuple[Any, bool]:
    """(torch.load with weights_only, whether it is memory-mapped: when the file is in the zip format)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (and `model_path`)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is not a file; give the path of a .pth file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); re-download it or pick another file")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"checkpoint {path} is truncated (its zip directory is missing); re-download it or pick another file"
            )
        use_mmap = True
    elif head[:2] == b"\x80\x02":
        log.warning("%s is in the legacy (non-zip) torch format: it cannot be memory-mapped, reading it whole "
                    "into memory", path)
        use_mmap = False
    else:
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint (unrecognised header); re-download it or pick another file"
        )
    try:
        return torch.load(path, map_location="cpu", mmap=use_mmap, weights_only=True), use_mmap
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects besides tensors, which are not loaded for "
                f"safety (checkpoints are untrusted pickles); use a file holding a plain state dict"
            ) from exc
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt ({_first_line(exc)}); re-download it or pick another file"
        ) from exc
    except Exception as exc:  # torch reports damaged files with many exception types
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt ({_first_line(exc)}); re-download it or pick another file"
        ) from exc


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two entries hold the same values (aliases normally share storage, checked first)."""
    if a.shape != b.shape:
        return False
    if (a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset() and a.stride() == b.stride()):
        return True
    return torch.equal(a, b)


def read_checkpoint(path: str, with_extra: bool = False) -> tuple:
    """Read a released file, one of our weight files or one of our training-state files.

    Returns (weights, meta), or (weights, meta, extra) with ``with_extra``. weights maps FCtLNet names to
    (memory-mapped, CPU) tensors, aliases folded into ``backbone.vgg.features.N``, the classifier
    dropped, the Inria release's block names translated. meta holds the stored ``_fctl`` entries
    (backbone, mode, n_class, correlation, classes, format_version; absent for released files) plus
    ``kind`` ("state-dict", "fctl-weights" or "training-state"), ``ignored`` (dropped keys), ``aliases``
    (file key -> FCtLNet name), ``mapped`` (whether the tensors are memory-mapped) and, for a
    released file, ``release`` ("deepglobe" or "inria"; None when it holds no correlation block) and
    ``release_mode`` (an Inria file's mode, told by its keys).
    extra is a training-state file's other entries (optimizer, epoch, ...; empty for weight files).
    Problems raise CheckpointError naming the file.
    """
    path = os.fspath(path)
    obj, mapped = load_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state dict; pick a model checkpoint (.pth)"
        )
    if isinstance(obj.get("model"), dict):
        kind, state = "training-state", obj["model"]
    else:
        kind, state = ("fctl-weights" if META_KEY in obj else "state-dict"), obj
    stored = state.get(META_KEY, obj.get(META_KEY, {}))
    if not isinstance(stored, dict):
        raise CheckpointError(f"checkpoint {path} has a malformed '{META_KEY}' entry; pick another file")
    if stored.get("kind") == "refinement":
        raise CheckpointError(f"checkpoint {path} is a refinement network (written by training with `refine`), not "
                              f"model weights; pass it as `refine_path` and the model it refines as `pre_path`")
    weights: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []
    aliases: dict[str, str] = {}
    inria_keys = False
    for key, tensor in state.items():
        if key == META_KEY:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path} is not a state dict: entry '{key}' is a {type(tensor).__name__}, not a tensor"
            )
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith(_CLASSIFIER):
            ignored.append(key)
            continue
        alias = _ALIAS.fullmatch(name)
        if alias:
            name = f"vgg.features.{_ALIAS_OFFSET[alias[1]] + int(alias[2])}.{alias[3]}"
        inria = _from_inria(name)
        if inria is not None:
            inria_keys = True
        ours = inria or _our_name(name)
        if alias:
            aliases[key] = ours
        if ours in weights:
            if key not in aliases and origin[ours] not in aliases:
                raise CheckpointError(
                    f"checkpoint {path} holds both '{origin[ours]}' and '{key}' for one tensor; pick another file"
                )
            if not _same_tensor(weights[ours], tensor):
                raise CheckpointError(
                    f"checkpoint {path}: alias '{key}' differs from '{origin[ours]}' (they should be one tensor); "
                    f"pick another file"
                )
            continue
        weights[ours] = tensor
        origin[ours] = key
    if not weights:
        raise CheckpointError(f"checkpoint {path} holds no model tensors; pick a model checkpoint (.pth)")
    meta = dict(stored)
    meta.update(kind=kind, ignored=ignored, aliases=aliases, mapped=mapped)
    if not stored:
        has_blocks = any(n.split(".", 1)[0] in CORRELATION_BLOCKS for n in weights)
        meta["release"] = "inria" if inria_keys else ("deepglobe" if has_blocks else None)
        if inria_keys:
            meta["release_mode"] = 2 if any("big_pool" in key for key in aliases) else 5
    if with_extra:
        extra = {k: v for k, v in obj.items() if k != "model"} if kind == "training-state" else {}
        return weights, meta, extra
    return weights, meta


def _infer_backbone(weights: dict[str, torch.Tensor]) -> str | None:
    """Backbone a state dict was saved from, judged by its key names (None when unclear)."""
    if any(k.startswith("backbone.vgg.features.") for k in weights):
        return "fcn8_vgg16"
    if any(k.startswith("backbone.body.layer1.0.conv3.") for k in weights):
        return "fpn_resnet50"
    if any(k.startswith("backbone.body.layer1.0.conv1.") for k in weights):
        return "fpn_resnet18"
    return None


def _groups(names: list[str], universe: list[str]) -> list[str]:
    """Module groups of ``names``: a first-level group when all of it is in ``names``, else its parts."""
    groups: list[str] = []
    for first in dict.fromkeys(n.split(".", 1)[0] for n in names):
        inside = [n for n in names if n.split(".", 1)[0] == first]
        total = sum(1 for n in universe if n.split(".", 1)[0] == first)
        if len(inside) == total:
            groups.append(first)
        else:
            groups.extend(dict.fromkeys(".".join(n.split(".")[:2]) for n in inside))
    return groups


def _describe_file(weights: dict[str, torch.Tensor], meta: dict) -> str:
    """A guess at what a checkpoint is, for error messages: its recorded mode, else the mode whose
    context modules it holds (the one with the most of them)."""
    known = meta.get("mode", meta.get("release_mode"))
    if known in MODES:
        return MODES[known].describe_file()
    present = {k.split(".", 1)[0] for k in weights}
    fitting = [m for m in MODES.values() if set(m.blocks) <= present]
    most = max((len(m.blocks) for m in fitting), default=-1)
    if most > 0:
        return next(m for m in fitting if len(m.blocks) == most).describe_file()
    if present == {"backbone"}:
        names = " or ".join(f"mode-{m.number} {m.name}" for m in fitting)
        return f"a backbone-only ({names}) checkpoint"
    return "a checkpoint with groups " + ", ".join(sorted(present))


def load_weights(module: nn.Module, path: str, *, what: str, allow_missing: bool, assign: bool = False,
                 source_mode: int | None = None, memory_format: torch.memory_format | None = None) -> LoadReport:
    """Copy a checkpoint file's tensors into ``module`` by name and report what happened.

    ``module`` is an FCtLNet (its trainable part is loaded) or a head=False backbone used as a frozen
    encoder (it takes only its own tensors, e.g. ``vgg.features`` of a full model file; the rest is
    reported as unused). ``what`` names the role or option in messages (e.g. "`glo_path`", a backticked setting name). Missing
    tensors are a CheckpointError naming the groups and the likely cause, unless ``allow_missing``, in
    which case they keep their initial values and the report lists them as "starting fresh". Nothing is
    copied when an error is raised. The file is memory-mapped, so tensors nobody needs are never read.
    With ``assign`` the module's tensors are replaced by the memory-mapped file tensors (copy-on-write)
    instead of being copied into: for inference this halves the peak memory of loading. With
    ``assign`` and ``memory_format`` channels_last, 4-D tensors become channels_last copies and the
    file pages under each are dropped as soon as it is copied (``utils.memory.release_file_pages``), so
    the copies do not double the memory of loading either.
    """
    weights, meta = read_checkpoint(path)
    return load_state_into(module, weights, path, what=what, allow_missing=allow_missing, meta=meta, assign=assign,
                           memory_format=memory_format,
                           source_mode=source_mode)


def load_state_into(
    module: nn.Module,
    weights: dict[str, torch.Tensor],
    path: str,
    *,
    what: str,
    allow_missing: bool,
    meta: dict | None = None,
    assign: bool = False,
    source_mode: int | None = None,
    memory_format: torch.memory_format | None = None,
) -> LoadReport:
    """``load_weights`` for weights already read by ``read_checkpoint`` (``path`` only names the file in
    messages; ``meta`` is read_checkpoint's meta, for the backbone/class checks and the report).
    ``assign`` makes the file's tensors the module's own instead of copying them in (see load_weights).

    Besides names and shapes, what a file holds must be usable by the model it goes into:
    - its stage: a file that records its mode (ours do) must be of the model's mode, except when
      training starts from it (``allow_missing``: e.g. a mode-1 "pre" file starting mode 4), and for a
      frozen encoder of ``source_mode`` (the mode whose model provides that encoder); for inference
      a file must not hold context modules the model lacks (it belongs to another mode);
    - its values: every loaded floating tensor must be finite (NaN or inf would predict class 0
      everywhere, or surface later as a diverging loss);
    - its precision: floating tensors of another precision (a half-precision export) are converted to
      the model's; non-floating tensors where the model has floating ones are refused.
    The checks read only the tensors that are loaded (the file is memory-mapped)."""
    path = os.fspath(path)
    meta = meta or {}
    target = unwrap(module)
    receiver = _receiver(target)
    _check_backbone(receiver, weights, meta, path, what)
    _check_class_count(target, receiver, meta, path, what)
    _check_shapes(receiver, weights, path, what)
    missing, missing_groups = _check_complete(target, receiver, weights, meta, path, what, allow_missing)
    _check_stage(target, weights, meta, path, what, receiver.role, allow_missing, source_mode)
    loaded = [n for n in receiver.slots if n in weights]
    if isinstance(target, FCtLNet):
        _check_correlation(target, loaded, meta, path, what)
    usable, converted = _usable_values(weights, receiver.slots, loaded, path, what)
    _put_values(target, receiver, usable, weights, loaded, meta, assign, memory_format)
    unexpected = [n for n in usable if n not in receiver.slots]
    return LoadReport(
        what=what,
        path=path,
        loaded=loaded,
        missing=missing,
        unexpected=unexpected,
        ignored=list(meta.get("ignored", [])),
        missing_groups=missing_groups,
        unexpected_groups=_groups(unexpected, list(usable)),
        converted=converted,
    )


@dataclass(frozen=True)
class _Receiver:
    """What a file's tensors go into: ``slots`` (FCtLNet name -> the module's tensor), the model's
    backbone, its class count (None for a backbone without head), its name in messages (``role``) and
    the prefix of the slot names that the module's own state dict lacks."""

    slots: dict[str, torch.Tensor]
    backbone: str
    n_class: int | None
    role: str
    prefix: str


def _receiver(target: nn.Module) -> _Receiver:
    """The receiver of an FCtLNet (its trainable part) or of a backbone (all of its tensors); TypeError
    for anything else."""
    if isinstance(target, FCtLNet):
        return _Receiver(target.trainable_state_dict(), target.backbone_name, target.n_class,
                         f"mode-{target.mode} model", "")
    if isinstance(target, Backbone):
        return _Receiver({"backbone." + k: v for k, v in target.state_dict().items()}, target.name,
                         target.n_class if target.has_head else None, f"{target.name} encoder", "backbone.")
    raise TypeError(f"load_weights expects an FCtLNet or a backbone, got {type(target).__name__}")


def _check_backbone(receiver: _Receiver, weights: dict[str, torch.Tensor], meta: dict, path: str, what: str) -> None:
    """The file's backbone (recorded, else judged by its key names) is the model's, and an FPN file is
    not from before the switch to GroupNorm."""
    file_backbone = meta.get("backbone") or _infer_backbone(weights)
    if file_backbone is not None and file_backbone != receiver.backbone:
        raise CheckpointError(
            f"{what} {path} holds a {file_backbone} model but the {receiver.role} uses {receiver.backbone}; "
            f"use `backbone` {file_backbone} or a {receiver.backbone} checkpoint"
        )
    stale_norm = next((n for n in weights if n.startswith("backbone.") and n.endswith(".running_mean")), None)
    if stale_norm is not None and receiver.backbone.startswith("fpn_"):
        raise CheckpointError(
            f"{what} {path} holds a BatchNorm {receiver.backbone} ({stale_norm}) from before the FPN backbones "
            f"switched to GroupNorm; its weights do not fit the GroupNorm model, so retrain that stage"
        )


def _check_class_count(target: nn.Module, receiver: _Receiver, meta: dict, path: str, what: str) -> None:
    """A file that records its class count (and, into an FCtLNet, its class table) fits the model's."""
    file_classes = meta.get("n_class")
    if receiver.n_class is not None and file_classes is not None and file_classes != receiver.n_class:
        recorded, ours = meta.get("classes") or {}, getattr(target, "class_table", None) or {}

        def named(table: dict, count: int) -> str:
            names = [str(c.get("name")) for c in table.get("classes", [])]
            return f"{count} classes" + (f" [{', '.join(names)}] ({table.get('name', 'unnamed table')})" if names else "")

        raise CheckpointError(
            f"{what} {path} was trained for {named(recorded, file_classes)} but the {receiver.role} has "
            f"{named(ours, receiver.n_class)}; use the file's `dataset`/`classes` or a checkpoint of this class table"
        )
    if isinstance(target, FCtLNet):
        _check_classes(target, meta, path, what)
    _check_bands(target, meta, path, what)


def _check_bands(target: nn.Module, meta: dict, path: str, what: str) -> None:
    """A file goes only into a model of as many bands as it records (three when it records none); the
    model then normalises with the file's statistics, which its weights were trained with."""
    ours = getattr(target, "bands", None)
    if ours is None:
        return
    recorded = InputBands.from_record(meta.get("bands"))
    if recorded.count != ours.count:
        raise CheckpointError(
            f"{what} {path} reads {recorded.describe()} but this model reads {ours.describe()}; train and predict "
            f"with the same bands (a prepared folder's dataset.json, `bands`) or pick a checkpoint of {ours.count} bands")
    if recorded != ours:
        target.bands = recorded
        if isinstance(target, FCtLNet):
            target.backbone.bands = recorded


def _check_shapes(receiver: _Receiver, weights: dict[str, torch.Tensor], path: str, what: str) -> None:
    """Every file tensor that a slot takes has the slot's shape; a class layer of another shape is told
    as a file of another class count."""
    for name, slot in receiver.slots.items():
        source = weights.get(name)
        if source is not None and source.shape != slot.shape and name.startswith(_CLASS_LAYERS) \
                and receiver.n_class is not None:
            raise CheckpointError(
                f"{what} {path} was trained for {source.shape[0]} classes ({released_name(name)} has shape "
                f"{tuple(source.shape)}) but the {receiver.role} has {receiver.n_class}; use the file's "
                f"`dataset`/`classes` (DeepGlobe: 7 classes, Inria: 2) or a checkpoint of this class table"
            )
        if source is not None and source.shape != slot.shape:
            raise CheckpointError(
                f"{what} {path}: {released_name(name)} has shape {tuple(source.shape)} in the file but "
                f"{tuple(slot.shape)} in the {receiver.role}; pick a checkpoint of the same model"
            )


def _check_complete(target: nn.Module, receiver: _Receiver, weights: dict[str, torch.Tensor], meta: dict, path: str,
                    what: str, allow_missing: bool) -> tuple[list[str], list[str]]:
    """(the slots the file lacks, their groups); lacking any is a CheckpointError unless ``allow_missing``."""
    missing = [n for n in receiver.slots if n not in weights]
    missing_groups = _groups(missing, list(receiver.slots))
    if missing and not allow_missing:
        if isinstance(target, FCtLNet):
            expected = target.spec.describe_expected_file()
        else:
            expected = f"a {receiver.backbone} model"
        raise CheckpointError(
            f"{what} {path} lacks {', '.join(missing_groups)} ({len(missing)} tensors, e.g. "
            f"{released_name(missing[0])}) needed by the {receiver.role}: it looks like "
            f"{_describe_file(weights, meta)}; the {receiver.role} needs {expected}"
        )
    return missing, missing_groups


def _put_values(target: nn.Module, receiver: _Receiver, usable: dict[str, torch.Tensor],
                file_weights: dict[str, torch.Tensor], loaded: list[str], meta: dict, assign: bool,
                memory_format: torch.memory_format | None) -> None:
    """Put the ``loaded`` tensors of ``usable`` (``_usable_values`` of ``file_weights``) into ``target``:
    copied into its slots, or with ``assign`` made its own (see load_weights)."""
    if assign:
        # The module's tensors become the (memory-mapped) file tensors: no second copy in RAM.
        converted_names = {n for n in loaded if usable[n] is not file_weights[n]}
        chosen = {n: _in_format(usable[n], memory_format, meta.get("mapped", False) and n not in converted_names)
                  for n in loaded}
        target.load_state_dict({n[len(receiver.prefix):]: t for n, t in chosen.items()}, strict=False, assign=True)
    else:
        with torch.no_grad():
            for name in loaded:
                receiver.slots[name].copy_(usable[name])


def file_correlation(meta: dict) -> str | None:
    """The correlation of a file's blocks: recorded in ours (files from before the option: centred),
    implied by the release for released files; None for a released file without blocks."""
    if meta.get("format_version") is not None:
        return meta.get("correlation", "centred")
    return RELEASE_CORRELATION.get(meta.get("release"))


def _check_correlation(target: FCtLNet, loaded: list[str], meta: dict, path: str, what: str) -> None:
    """A file's correlation blocks go only into a model of the same correlation (see ``file_correlation``)."""
    blocks = sorted({n.split(".", 1)[0] for n in loaded} & set(CORRELATION_BLOCKS))
    correlation = file_correlation(meta)
    if not blocks or correlation is None or correlation == target.correlation:
        return
    source = f"the {meta['release']} release's" if meta.get("release") else "recorded in the file"
    raise CheckpointError(
        f"{what} {path} holds {correlation} correlation blocks ({source}: {', '.join(blocks)}) but the model "
        f"uses `correlation` {target.correlation}; pass `correlation` {correlation} (DeepGlobe release: centred, "
        f"Inria release: plain) or a checkpoint trained with {target.correlation}"
    )


def _check_classes(target: FCtLNet, meta: dict, path: str, what: str) -> None:
    """A file that records its class table goes only into a model of the same classes (names, colours).
    A table that differs only in its rules (the unscored class, the ignore value) is legal, since they
    change scoring and training, not what the network predicts: one warning names the rule."""
    recorded, ours = meta.get("classes"), target.class_table
    if not recorded or not ours:
        return
    if recorded.get("classes") == ours.get("classes"):
        rules = rule_difference(recorded, ours)
        if rules:
            log.warning("%s %s was trained with the same classes but %s; scores and training follow this run's "
                        "table", what, path, rules)
        return

    def names(table: dict) -> str:
        return ", ".join(str(c.get("name")) for c in table.get("classes", []))

    raise CheckpointError(
        f"{what} {path} was trained for the classes [{names(recorded)}] ({recorded.get('name', 'unnamed table')}) "
        f"but this run uses [{names(ours)}] ({ours.get('name', 'unnamed table')}): {table_difference(recorded, ours)}; "
        f"pass the file's `dataset`/`classes` or a checkpoint trained for this class table"
    )


def rule_difference(recorded: dict, ours: dict) -> str:
    """What differs between two recorded class tables' rules, in words ("" when nothing does): the
    unscored class (left out of the means) and the ignore value (mask value of unlabelled pixels)."""
    parts = []
    for key, what in (("unscored", "the unscored class"), ("ignore", "the ignore value")):
        theirs, mine = recorded.get(key), ours.get(key)
        if theirs != mine:
            parts.append(f"{what} is {_rule_value(theirs)} in the file, {_rule_value(mine)} here")
    return " and ".join(parts)


def _rule_value(value: Any) -> str:
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def table_difference(recorded: dict, ours: dict) -> str:
    """What differs between two recorded class tables, in words: the names, their order, a class's colour."""
    theirs_list, ours_list = recorded.get("classes", []), ours.get("classes", [])
    their_names = [c.get("name") for c in theirs_list]
    our_names = [c.get("name") for c in ours_list]
    if their_names != our_names:
        if sorted(map(str, their_names)) == sorted(map(str, our_names)):
            return "the same names in another order"
        return "other class names" if len(their_names) == len(our_names) else \
            f"{len(their_names)} classes against {len(our_names)}"
    for theirs, mine in zip(theirs_list, ours_list):
        if theirs.get("colour") != mine.get("colour"):
            return f"class '{theirs.get('name')}' has colour {theirs.get('colour')} in the file, {mine.get('colour')} here"
    return "the class entries differ"


def _check_stage(target: nn.Module, weights: dict[str, torch.Tensor], meta: dict, path: str, what: str, role: str,
                 allow_missing: bool, source_mode: int | None) -> None:
    """The file's stage (recorded mode, or the context modules it holds) fits its use (see load_state_into)."""
    recorded = meta.get("mode", meta.get("release_mode"))
    if isinstance(target, FCtLNet):
        if allow_missing:
            return
        if recorded is not None and recorded != target.mode:
            raise CheckpointError(f"{what} {path} is {_recorded_file(recorded)} but the {role} needs "
                                  f"{target.spec.describe_expected_file()}")
        if meta.get("release_mode") == target.mode:
            return  # the Inria release's mode-2 files hold the whole block: the unused branches are reported
        extra = sorted({n.split(".", 1)[0] for n in weights} - {"backbone", *target.spec.blocks})
        if extra:
            raise CheckpointError(f"{what} {path} holds context modules the {role} does not have ({', '.join(extra)}): "
                                  f"it looks like {_describe_file(weights, meta)}; the {role} needs "
                                  f"{target.spec.describe_expected_file()}")
    elif source_mode is not None and recorded is not None and recorded != source_mode:
        raise CheckpointError(f"{what} {path} is {_recorded_file(recorded)}, but the {role} comes from "
                              f"{MODES[source_mode].describe_expected_file()}")


def _in_format(tensor: torch.Tensor, memory_format: torch.memory_format | None, file_backed: bool) -> torch.Tensor:
    """``tensor`` in ``memory_format`` (4-D tensors only); the file pages under a replaced file tensor
    are dropped at once, so that loading never holds a file tensor and its copy together."""
    if memory_format is None or tensor.dim() != 4 or tensor.is_contiguous(memory_format=memory_format):
        return tensor
    copy = tensor.contiguous(memory_format=memory_format)
    if file_backed:
        release_file_pages(tensor)
    return copy


_CHECK_CHUNK = 1 << 22  # values checked at a time: the largest released tensor has 103M


def _non_finite(tensor: torch.Tensor) -> int:
    """How many values of ``tensor`` are NaN or infinite, checked a chunk at a time so that no
    temporary of the tensor's size is made (the file's tensors are memory-mapped)."""
    flat = tensor.reshape(-1)
    if all(bool(torch.isfinite(flat[i:i + _CHECK_CHUNK]).all()) for i in range(0, flat.numel(), _CHECK_CHUNK)):
        return 0
    return sum(int((~torch.isfinite(flat[i:i + _CHECK_CHUNK])).sum()) for i in range(0, flat.numel(), _CHECK_CHUNK))


def _recorded_file(mode: Any) -> str:
    return MODES[mode].describe_file() if mode in MODES else f"a mode-{mode} checkpoint"


def _usable_values(weights: dict[str, torch.Tensor], slots: dict[str, torch.Tensor], loaded: list[str], path: str,
                   what: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(``weights`` with the loaded tensors checked for finite values and converted to the slots'
    precision, the names of the converted tensors)."""
    usable, converted = dict(weights), []
    for name in loaded:
        tensor, slot = weights[name], slots[name]
        if not slot.is_floating_point():
            continue
        if not tensor.is_floating_point():
            raise CheckpointError(f"{what} {path}: {released_name(name)} holds {tensor.dtype} values where the model "
                                  f"has {slot.dtype} weights; the file is not a weights file of this model: pick another")
        bad = _non_finite(tensor)
        if bad:
            raise CheckpointError(f"{what} {path}: {released_name(name)} holds {bad} NaN or infinite values (of "
                                  f"{tensor.numel()}); the file is damaged or comes from a diverged run: pick another "
                                  f"checkpoint (an earlier epoch)")
        if tensor.dtype != slot.dtype:
            usable[name] = tensor.to(slot.dtype)
            converted.append(f"{tensor.dtype}".replace("torch.", ""))
    return usable, converted


def export_weights(model: nn.Module) -> dict[str, Any]:
    """What ``save_weights`` writes: the trainable tensors under released names, plus ``_fctl`` meta.

    Also the ``model`` entry of a training-state file. The tensors are the model's own (not copies).
    """
    net = unwrap(model)
    if not isinstance(net, FCtLNet):
        raise TypeError(f"save_weights expects an FCtLNet, got {type(net).__name__}")
    trainable = net.trainable_state_dict()
    state: dict[str, Any] = {released_name(k): v for k, v in trainable.items()}
    if len(state) != len(trainable):
        raise RuntimeError("two parameters map to the same released name")
    state[META_KEY] = {
        "backbone": net.backbone_name,
        "mode": net.mode,
        "n_class": net.n_class,
        "correlation": net.correlation,
        "classes": net.class_table,
        "format_version": FORMAT_VERSION,
    }
    if not net.bands.is_rgb:  # files of RGB models stay as they were
        state[META_KEY]["bands"] = net.bands.record()
    return state


def save_weights(model: nn.Module, path: str) -> None:
    """Write the model's trainable weights (no frozen encoders, no aliases, no classifier) atomically."""
    atomic_save(export_weights(model), path)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save ``obj`` to ``path`` so that a crash never leaves a half-written file under that name
    (see ``utils.files.atomic_open``). Write failures raise CheckpointError."""
    path = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_open(path) as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot write {path} ({_first_line(exc)}); check that the folder is writable and has free space"
        ) from exc
