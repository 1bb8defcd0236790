"""Fake released FCtL checkpoints for tests and tools (tools.benchmark): the exact key/shape layout of
the released files.

Kinds: the DeepGlobe release's "all", "medium", "global" (all/medium/global.epoch.pth) and the Inria
release's "inria_all", "B10", "B15" (all/B10/B15.epoch.pth).
LAYOUT is the released key layout (released_keys/deepglobe.json, released_keys/inria.json): per file,
rows (key, shape, canonical), canonical None when the key is its own canonical key; alias rows (pool3.*,
big_pool5.*, ...) name the tensor they share. ``make_released_checkpoint`` writes such a file the way
nn.DataParallel training saved them: a plain state dict, ``module.`` keys, every alias the SAME tensor
object (one storage in the file), random values, and VGG's classifier in full size (zeros: it is never
read, and zeros are cheap to make).
"""

import json
import math
import os
from pathlib import Path

import torch

KINDS = ("all", "medium", "global")
INRIA_KINDS = ("inria_all", "B10", "B15")
RELEASE_CLASSES = {"all": 7, "medium": 7, "global": 7, "inria_all": 2, "B10": 2, "B15": 2}
_INRIA_FILE_KIND = {"inria_all": "all", "B10": "B10", "B15": "B15"}
N_CLASS_LAYERS = ("module.output.6.", "module.adj_pool3.", "module.adj_pool4.", "module.up_")
CLASSIFIER = "module.vgg.classifier."

def _read_layout(file_name: str) -> dict[str, tuple[tuple[str, tuple[int, ...], str | None], ...]]:
    """A key layout file in released_keys/ next to this module:
    per file, rows (key, shape, canonical key or None when the key is its own canonical name)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "released_keys", file_name)) as handle:
        raw = json.load(handle)
    return {kind: tuple((key, tuple(shape), None if canonical == key else canonical) for key, shape, canonical in rows)
            for kind, rows in raw.items()}


_INRIA = _read_layout("inria.json")
LAYOUT = {**_read_layout("deepglobe.json"), **{kind: _INRIA[name] for kind, name in _INRIA_FILE_KIND.items()}}


def canonical_key(kind: str, key: str) -> str:
    """The key of the tensor that ``key`` shares in the released ``kind`` file."""
    for row_key, _, canonical in LAYOUT[kind]:
        if row_key == key:
            return canonical or row_key
    raise KeyError(key)


def released_shapes(kind: str, n_class: int | None = None) -> dict[str, tuple[int, ...]]:
    """Canonical key -> shape of the released ``kind`` file, for a model with ``n_class`` classes."""
    n_class = RELEASE_CLASSES[kind] if n_class is None else n_class
    shapes = {}
    for key, shape, canonical in LAYOUT[kind]:
        if canonical is None:
            if key.startswith(N_CLASS_LAYERS):
                released = RELEASE_CLASSES[kind]
                shape = tuple(n_class if i < 2 and d == released else d for i, d in enumerate(shape))
            shapes[key] = shape
    return shapes


def make_released_checkpoint(
    kind: str, path: str | Path, seed: int, n_class: int | None = None, dtype: torch.dtype = torch.float32
) -> None:
    """Write a fake released ``kind`` checkpoint (see the module doc; ``n_class`` defaults to the
    release's) to ``path``.

    Values are random (scaled by 1/sqrt(fan_in) so a forward pass stays finite), the classifier is
    zeros; aliases are the same tensor object as their canonical key, as in the real files.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in released_shapes(kind, n_class).items():
        if key.startswith(CLASSIFIER):
            tensors[key] = torch.zeros(shape, dtype=dtype)
            continue
        scale = 1.0 / math.sqrt(math.prod(shape[1:])) if len(shape) > 1 else 0.01
        tensors[key] = (torch.randn(shape, generator=generator) * scale).to(dtype)
    state = {key: tensors[canonical or key] for key, _, canonical in LAYOUT[kind]}
    torch.save(state, path)
