"""Class tables: the classes of a data set, their colours, and conversion between masks and class indices.

A class table is a JSON file (``data/classes/deepglobe.json`` and ``data/classes/inria.json`` ship with
the repository; ``--dataset custom --classes FILE`` reads your own)::

    {"name": "mine", "title": "My roads",
     "classes": [{"name": "background", "colour": [0, 0, 0]}, {"name": "road", "colour": [255, 0, 0]}],
     "unscored": "background",
     "index_aliases": {"255": "road"}}

- ``name`` (and an optional ``title`` for messages) names the table;
- ``classes``: index i is the i-th entry; at least 2 and at most 255 classes (255 marks nodata in
  GeoTIFF masks), unique names and unique RGB colours. Masks are coloured with these colours.
- ``unscored`` (optional, may be null): the class left out of the mean IoU and mean F1 (its IoU is
  still reported), the way DeepGlobe's "unknown" is; Inria's mIoU is therefore the building IoU.
  Training still learns every class, as the released code does.
- ``index_aliases`` (optional): single-band mask values that stand for a class besides the class
  indices themselves (Inria's official ground truth marks buildings with 255).
- ``ignore`` (optional, may be null): the single-band mask value of unlabelled pixels (a value from the
  number of classes to 255 that is no alias; ``tools.prepare_scenes`` writes 255). They are read as
  ``utils.labels.IGNORE_INDEX`` and left out of the loss and of every score. DeepGlobe's and Inria's
  tables have none: every pixel of theirs is a class.

Conversion is exact: a colour that is not in the table (for example a mask saved as JPEG, whose
compression blurs colours) or an index that is not a class is an error naming the file, never
rounded to the nearest class, because a silently wrong label is worse than a stopped run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch

from utils.errors import ConfigError, DataError
from utils.labels import IGNORE_INDEX

TABLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "classes")
SHIPPED = ("deepglobe", "inria")
MAX_CLASSES = 255
UNKNOWN = -1  # lookup value of a mask value that is no class
UNLABELLED_COLOUR = (128, 128, 128)  # unlabelled pixels in pictures of labels


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack an (..., 3) uint8 array into one int32 per pixel: r<<16 | g<<8 | b."""
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]


@dataclass(frozen=True, eq=False)
class ClassTable:
    """One data set's classes (see the module doc). ``colours`` is (n, 3) uint8, read-only."""

    name: str
    names: tuple[str, ...]
    colours: np.ndarray
    unscored: int | None
    index_aliases: tuple[tuple[int, int], ...] = ()
    source: str = "<built in>"
    title: str = ""  # for messages, e.g. "DeepGlobe" (default: the name)
    ignore: int | None = None  # the mask value of unlabelled pixels

    def __post_init__(self) -> None:
        self.colours.setflags(write=False)
        object.__setattr__(self, "title", self.title or self.name)
        packed = pack_rgb(self.colours)
        order = np.argsort(packed)
        object.__setattr__(self, "_codes", packed[order])
        object.__setattr__(self, "_classes", order.astype(np.uint8))
        lookup = np.full(256, UNKNOWN, dtype=np.int16)
        lookup[: self.n_class] = np.arange(self.n_class)
        for value, index in self.index_aliases:
            lookup[value] = index
        if self.ignore is not None:
            lookup[self.ignore] = IGNORE_INDEX
        object.__setattr__(self, "_index_lookup", lookup)

    @property
    def n_class(self) -> int:
        return len(self.names)

    @property
    def ignore_index(self) -> int | None:
        """``IGNORE_INDEX`` when masks of this table may hold unlabelled pixels, else None: what the loss
        and the score counters take as their ``ignore_index``."""
        return None if self.ignore is None else IGNORE_INDEX

    def record(self) -> dict[str, Any]:
        """The JSON-able table that checkpoints record (and compare by its ``classes``)."""
        record = {"name": self.name, "classes": [{"name": n, "colour": [int(c) for c in rgb]}
                                                 for n, rgb in zip(self.names, self.colours)],
                  "unscored": None if self.unscored is None else self.names[self.unscored]}
        if self.ignore is not None:
            record["ignore"] = self.ignore
        return record

    def describe(self) -> str:
        """e.g. 'inria (2 classes: background, building)'."""
        return f"{self.name} ({self.n_class} classes: {', '.join(self.names)})"

    # --- masks -> indices ------------------------------------------------------------------------------
    def index_values(self, values: np.ndarray, path: str, mode: str) -> np.ndarray:
        """Single-band mask values (any integer array) -> uint8 class indices, through the class indices,
        the table's ``index_aliases`` and its ``ignore`` value (read as ``IGNORE_INDEX``); any other value
        is a DataError naming the file."""
        values = np.asarray(values)
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high < self.n_class:
            return values.astype(np.uint8, copy=False)
        if low < 0 or high > 255:
            mapped = np.full(values.shape, UNKNOWN, np.int16)
        else:
            mapped = self._index_lookup[values.astype(np.intp, copy=False)]
        bad = mapped == UNKNOWN
        if bad.any():
            first = int(values.reshape(-1)[int(np.flatnonzero(bad)[0])])
            aliases = "".join(f", {v} for {self.names[i]}" for v, i in self.index_aliases)
            if self.ignore is not None:
                aliases += f", {self.ignore} for unlabelled"
            raise DataError(
                f"label mask {path} (mode {mode}, read as class indices) holds values up to {high} (min {low}) at "
                f"{int(bad.sum())} pixels that are no class (first: {first}); the {self.title} classes are indices "
                f"0..{self.n_class - 1}{aliases} (a colour mask must be RGB)"
            )
        return mapped.astype(np.uint8)

    def colour_to_index(self, rgb: np.ndarray, path: str) -> np.ndarray:
        """Map an RGB colour mask uint8 (H, W, 3) to class indices uint8 (H, W), accepting only the exact
        colours of the table. Raises DataError naming the file, the first colour that is not in the table
        (in row-major order), where it is, and how many pixels have such colours."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"colour_to_index expects (H, W, 3), got {rgb.shape}")
        codes = pack_rgb(rgb)
        pos = np.searchsorted(self._codes, codes)
        np.minimum(pos, len(self._codes) - 1, out=pos)
        known = self._codes[pos] == codes
        if not known.all():
            bad = ~known
            first = int(np.flatnonzero(bad)[0])
            row, col = divmod(first, rgb.shape[1])
            colour = tuple(int(c) for c in rgb[row, col])
            raise DataError(
                f"{path}: {int(bad.sum())} of {codes.size} pixels have colours outside the {self.title} palette "
                f"(first: RGB {colour} at row {row}, column {col}); a mask must hold the exact class colours "
                f"or class indices 0..{self.n_class - 1} and be saved losslessly (PNG, not JPEG)"
            )
        return self._classes[pos]

    def knows_colours(self, rgb: np.ndarray) -> np.ndarray:
        """Whether each colour of an (..., 3) uint8 array is a class colour."""
        return np.isin(pack_rgb(rgb), self._codes)

    # --- indices -> colours ----------------------------------------------------------------------------
    @overload
    def index_to_colour(self, index: np.ndarray) -> np.ndarray: ...
    @overload
    def index_to_colour(self, index: torch.Tensor) -> torch.Tensor: ...

    def index_to_colour(self, index: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Colour a class-index map: integer (..., H, W) numpy array or tensor (on any device) ->
        uint8 (..., 3) of the same kind. Values that are no class are a programming error (ValueError):
        predictions and checked masks never hold them (see ``label_to_colour`` for labels)."""
        if isinstance(index, torch.Tensor):
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.n_class):
                raise ValueError(f"class indices must be in 0..{self.n_class - 1}")
            return torch.from_numpy(self.colours.copy()).to(index.device)[index.long()]
        index = np.asarray(index)
        if index.size and (int(index.min()) < 0 or int(index.max()) >= self.n_class):
            raise ValueError(f"class indices must be in 0..{self.n_class - 1}")
        return self.colours[index.astype(np.intp, copy=False)]

    def label_to_colour(self, label: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``index_to_colour`` of a label map that may hold ``IGNORE_INDEX``: unlabelled pixels are drawn in
        ``UNLABELLED_COLOUR`` (grey), which only pictures use (a grey class colour would look the same)."""
        if self.ignore is None:
            return self.index_to_colour(label)
        if isinstance(label, torch.Tensor):
            ignored = label == IGNORE_INDEX
            rgb = self.index_to_colour(torch.where(ignored, 0, label.long()))
            return torch.where(ignored[..., None], torch.tensor(UNLABELLED_COLOUR, dtype=torch.uint8,
                                                                device=label.device), rgb)
        label = np.asarray(label)
        ignored = label == IGNORE_INDEX
        rgb = self.index_to_colour(np.where(ignored, 0, label))
        rgb[ignored] = UNLABELLED_COLOUR
        return rgb


def _fail(source: str, problem: str) -> ConfigError:
    return ConfigError(f"class table {source}: {problem}; see data/classes/deepglobe.json for the format "
                       f"(pass it as `classes`)")


def _colour(source: str, name: str, value: Any) -> tuple[int, int, int]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        raise _fail(source, f"class '{name}' has colour {value!r}, not three integers 0..255")
    return tuple(value)


def _class_index(source: str, names: tuple[str, ...], value: Any, field: str) -> int:
    if value not in names:
        raise _fail(source, f"`{field}` names '{value}', which is not one of the classes ({', '.join(names)})")
    return names.index(value)


def table_from_dict(raw: Any, source: str) -> ClassTable:
    """Check a parsed class-table JSON (see the module doc); ConfigError naming ``source`` otherwise."""
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list):
        raise _fail(source, "it must be a JSON object with a list `classes`")
    entries = raw["classes"]
    if not 2 <= len(entries) <= MAX_CLASSES:
        raise _fail(source, f"it has {len(entries)} classes; a table needs 2 to {MAX_CLASSES}")
    names, colours = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise _fail(source, f"class {i} needs a non-empty string `name` and a `colour`")
        if entry["name"] in names:
            raise _fail(source, f"class name '{entry['name']}' appears twice")
        colour = _colour(source, entry["name"], entry.get("colour"))
        if colour in colours:
            raise _fail(source, f"classes '{names[colours.index(colour)]}' and '{entry['name']}' share the colour "
                                f"{list(colour)}; every class needs its own")
        names.append(entry["name"])
        colours.append(colour)
    names_t = tuple(names)
    unscored = raw.get("unscored")
    unscored_index = None if unscored is None else _class_index(source, names_t, unscored, "unscored")
    aliases = []
    raw_aliases = raw.get("index_aliases") or {}
    if not isinstance(raw_aliases, dict):
        raise _fail(source, "`index_aliases` must map mask values to class names")
    for value, target in raw_aliases.items():
        if not str(value).isdigit() or not len(names) <= int(value) <= 255:
            raise _fail(source, f"`index_aliases` value {value!r} must be an integer from {len(names)} to 255 "
                                f"(smaller values are class indices)")
        aliases.append((int(value), _class_index(source, names_t, target, "index_aliases")))
    ignore = raw.get("ignore")
    if ignore is not None:
        if isinstance(ignore, bool) or not isinstance(ignore, int) or not len(names) <= ignore <= 255:
            raise _fail(source, f"`ignore` must be a mask value from {len(names)} to 255 (or null), got {ignore!r}")
        if ignore in dict(aliases):
            raise _fail(source, f"`ignore` value {ignore} is also an `index_aliases` value")
    name = raw.get("name") or os.path.splitext(os.path.basename(source))[0]
    return ClassTable(str(name), names_t, np.array(colours, dtype=np.uint8), unscored_index, tuple(aliases), source,
                      str(raw.get("title") or name), ignore)


def load_class_table(path: str) -> ClassTable:
    """Read and check a class-table JSON file; ConfigError naming the file and the problem."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"class table {path} not found; pass an existing JSON file as `classes`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read class table {path} ({exc}); pass a readable JSON file as `classes`") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"class table {path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
    return table_from_dict(raw, path)


def shipped_table(name: str) -> ClassTable:
    """One of the tables shipped in data/classes (``SHIPPED``)."""
    if name not in SHIPPED:
        raise ConfigError(f"unknown class table '{name}'; shipped tables: {', '.join(SHIPPED)}")
    return load_class_table(os.path.join(TABLES_DIR, f"{name}.json"))


DEEPGLOBE = shipped_table("deepglobe")
INRIA = shipped_table("inria")

# The DeepGlobe table under the names the code used before class tables existed.
CLASS_NAMES: tuple[str, ...] = DEEPGLOBE.names
N_CLASSES = DEEPGLOBE.n_class
PALETTE = DEEPGLOBE.colours


def colour_to_index(rgb: np.ndarray, path: str, table: ClassTable = DEEPGLOBE) -> np.ndarray:
    """``table.colour_to_index`` (DeepGlobe by default)."""
    return table.colour_to_index(rgb, path)


def index_to_colour(index, table: ClassTable = DEEPGLOBE):
    """``table.index_to_colour`` (DeepGlobe by default)."""
    return table.index_to_colour(index)
