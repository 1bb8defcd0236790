"""Fetching ImageNet weights through torchvision's weights API, with a usable offline error.

The backbones start from ImageNet weights when ``pretrained=True``. torchvision downloads them once into
``torch.hub.get_dir()/checkpoints``; on a machine without internet that download fails deep inside urllib,
so the failure is turned into one CheckpointError line that names the file, the folder to put it in by
hand, and the ``--no_pretrained`` way out.
"""

import os

import torch
from torchvision.models import WeightsEnum

from utils.errors import CheckpointError


def imagenet_state_dict(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """Return the state dict of ``weights`` (downloaded on first use, then read from torch's cache).

    Raises CheckpointError when the file can neither be downloaded nor read from the cache.
    """
    file_name = os.path.basename(weights.url)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # urllib, hash-check and torch.load failures all mean "no usable file"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"cannot get the ImageNet weights {file_name} ({type(exc).__name__}: {reason}); run with "
            f"`no_pretrained`, or download {weights.url} by hand and place it as "
            f"{os.path.join(folder, file_name)} (replacing any partial file there)"
        ) from exc
