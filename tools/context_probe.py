"""Does the global context carry the synthetic scene type, and can FCtL's correlation block use it?

The diagnostic behind the README's findings on the CPU demo (section "The CPU demo"). It reads what
``make demo`` left in its folder (the synthetic scenes and the stage checkpoints) and measures two
things on them:

features  How strongly the global context tells farm from wild scenes: what FCtL's large branch reads
          from the frozen global encoder (of --global_model, on the global view): pool5 for FCN8, the
          head features pooled to the top grid for the FPNs; with --context top, the encoder's top
          level instead, which the FPN large branch read until the README's probes showed it carries
          almost none of the scene. Averaged over positions, as a fresh correlation block reads it
          (its attention starts out nearly uniform). Printed: the size of the scene difference (half
          the difference of the two scene means) against the size of the common mean, d' along that
          difference, and the held-out accuracy of a ridge classifier on per-channel standardised
          features (first half of the scenes to fit, second half to test). The same at positions that
          are all field, which a block attending to the patch's own surroundings would read.
learn     Whether the correlation block can use the global context when nothing else moves: a mode-3
          model (self + large context) on the frozen local encoder (local.epoch.pth) and the global
          encoder; only its context modules train, for --steps steps of one training scene, on cached
          features. With --cue C, every global context gets C times a fixed random unit vector added,
          with the sign of its scene type: a clean cue of known size, to find how large a cue the
          block picks up in that many steps. Printed: accuracy on the field pixels of validation
          patches that show no settlement (only context can decide them), before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

from dataset.split_layout import SplitDataset
from dataset.synthetic import BARREN, FIELD_LABELS, URBAN
from models.fctl import FCtLNet
from models.setup import create_model
from option import report_error
from pipeline.config import PipelineConfig
from pipeline.contexts import global_view
from pipeline.grid import make_grid
from pipeline.units import patch_units
from utils.errors import FCtLError
from utils.loss import FocalLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIELD_SHARE = 0.9  # a top position counts as field when at least this share of its cell is field
CONTEXT_MODULES = ("local", "large", "fusion")


def scene_signs(labels: list[torch.Tensor]) -> torch.Tensor:
    """+1 for a farm scene (its settlements are urban), -1 for a wild one (barren), from the masks."""
    return torch.tensor([1.0 if bool((label == URBAN).any()) else -1.0 for label in labels])


def separation(features: torch.Tensor, signs: torch.Tensor, ridge: float = 10.0) -> dict[str, float]:
    """features (N, C), signs (N,) of +-1 -> how well the two scene types separate.

    ratio: |half the difference of the class means| / |overall mean|; dprime: distance of the two
    class means along their difference, in average class standard deviations; ridge_accuracy: a ridge
    classifier on per-channel standardised features fitted on the first half, scored on the second.
    """
    if not (bool((signs > 0).sum() >= 2) and bool((signs < 0).sum() >= 2)):
        raise FCtLError("the probe needs at least two scenes of each type; pass more images")
    features = features.double()
    mean = features.mean(0)
    half_diff = (features[signs > 0].mean(0) - features[signs < 0].mean(0)) / 2
    direction = half_diff / half_diff.norm().clamp_min(1e-12)
    proj = features @ direction
    spread = (proj[signs > 0].std() + proj[signs < 0].std()) / 2
    dprime = (proj[signs > 0].mean() - proj[signs < 0].mean()) / spread.clamp_min(1e-12)
    fit = len(features) // 2
    centre, scale = features[:fit].mean(0), features[:fit].std(0).clamp_min(1e-6)
    z = (features - centre) / scale
    gram = z[:fit].T @ z[:fit] + ridge * torch.eye(z.shape[1], dtype=z.dtype)
    weights = torch.linalg.solve(gram, z[:fit].T @ signs[:fit].double())
    accuracy = ((z[fit:] @ weights).sign() == signs[fit:].double()).double().mean()
    return {"ratio": float(half_diff.norm() / mean.norm().clamp_min(1e-12)), "dprime": float(dprime),
            "ridge_accuracy": float(accuracy)}


def _cells(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Share of each cell of a size-grid covered by mask (H, W) bool."""
    return torch.nn.functional.adaptive_avg_pool2d(mask[None, None].float(), size)[0, 0]


Encoder = Callable[[torch.Tensor], torch.Tensor]  # global view (1,3,g,g) -> context map (1,C,h,w)


def _top_of(encoder: torch.nn.Module) -> Encoder:
    """The encoder's top level as an Encoder (the ``--context top`` probe)."""
    return lambda view: encoder.encode(view)[1]


def global_features(encode: Encoder, images: list[torch.Tensor], labels: list[torch.Tensor],
                    size_g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global context maps: (pooled (N, C), field positions (M, C), their scene signs (M,))."""
    pooled, field, field_signs = [], [], []
    signs = scene_signs(labels)
    with torch.no_grad():
        for image, label, sign in zip(images, labels, signs):
            context = encode(global_view(image, size_g))[0]
            pooled.append(context.mean((1, 2)))
            share = _cells(torch.isin(label, torch.tensor(FIELD_LABELS)), context.shape[-2:])
            cells = context[:, share >= FIELD_SHARE].T
            field.append(cells)
            field_signs.append(sign.expand(len(cells)))
    return torch.stack(pooled), torch.cat(field), torch.cat(field_signs)


def cache_patches(model: FCtLNet, image: torch.Tensor, label: torch.Tensor, p: int, size_g: int,
                  cue: torch.Tensor | None) -> dict:
    """One scene's frozen features: patch skips and tops, global context (+ the scene cue), patch labels."""
    with torch.no_grad():
        # Every patch of the scene in one unit (the training pipeline's patches, labels and global context).
        cfg = PipelineConfig(p, size_g, context=1, sub_batch_size=len(make_grid(*image.shape[-2:], p).boxes()))
        unit = next(patch_units(model, image, label, cfg))
        skips, top = model.backbone.encode(unit.x)
    global_context, y = unit.inputs.global_context, unit.y
    if cue is not None:
        global_context = global_context + scene_signs([label])[0] * cue.view(1, -1, 1, 1)
    return {"skips": skips, "top": top, "global_context": global_context, "y": y}


def _logits(model: FCtLNet, item: dict) -> torch.Tensor:
    """Mode-3 forward from cached encoder outputs."""
    top = item["top"]
    top = top + model.fusion([model.local(top, top), model.large(top, item["global_context"])])
    return model.backbone.decode(item["skips"], top, tuple(item["y"].shape[-2:]))


def blind_field_accuracy(model: FCtLNet, items: list[dict]) -> float:
    """Accuracy on field pixels of patches that show no settlement (only context can decide them)."""
    correct = total = 0
    with torch.no_grad():
        for item in items:
            y = item["y"]
            blind = ~torch.isin(y, torch.tensor([URBAN, BARREN])).flatten(1).any(1)
            pixels = torch.isin(y, torch.tensor(FIELD_LABELS)) & blind[:, None, None]
            correct += int((_logits(model, item).argmax(1) == y)[pixels].sum())
            total += int(pixels.sum())
    if total == 0:
        raise FCtLError("no validation patch shows field without settlement; pass more validation scenes")
    return correct / total


def train_context(model: FCtLNet, items: list[dict], steps: int, lr: float, seed: int) -> None:
    """Adam on the context modules only (no weight decay), one cached scene per step, focal loss as in
    training; every other weight stays as loaded."""
    model.requires_grad_(False)
    params = [p for name in CONTEXT_MODULES for p in getattr(model, name).parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    criterion = FocalLoss(gamma=3.0)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if not order:
            order = torch.randperm(len(items), generator=generator).tolist()
        item = items[order.pop()]
        optimizer.zero_grad(set_to_none=True)
        criterion(_logits(model, item), item["y"]).backward()
        optimizer.step()


def _load(data: str, split: str, limit: int | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    dataset = SplitDataset(data, split, labelled=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    samples = [dataset[i] for i in range(count)]
    return [s["image"] for s in samples], [s["label"] for s in samples]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=os.path.join(ROOT, "demo"), help="the folder make demo wrote")
    parser.add_argument("--backbone", default="fpn_resnet18")
    parser.add_argument("--global_model", default=None, help="global (mode 0) checkpoint (default: <demo>/models/"
                        "global.epoch.pth)")
    parser.add_argument("--context", choices=("context", "top"), default="context",
                        help="features probe: the large branch's context or the encoder's top (module doc)")
    parser.add_argument("--size_p", type=int, default=100)
    parser.add_argument("--size_g", type=int, default=100)
    parser.add_argument("--images", type=int, default=None, help="training scenes to use (default: all)")
    parser.add_argument("--steps", type=int, default=224, help="optimizer steps of the learn probe (0: skip it)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gamma_init", type=float, default=1.0,
                        help="start of the correlation gates, as train_deep_globe.py's option (the released value is "
                             "0, from which Adam opens a gate by about --lr per step)")
    parser.add_argument("--cue", type=float, default=0.0,
                        help="size of the clean scene cue added to the global context")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 0 or args.cue < 0 or (args.images is not None and args.images < 4):
        parser.error("--steps and --cue must be >= 0 and --images at least 4")
    try:
        _probe(args)
    except FCtLError as error:
        return report_error(error, parser)
    return 0


def _probe(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    data, models = os.path.join(args.demo, "data"), os.path.join(args.demo, "models")
    global_model = args.global_model or os.path.join(models, "global.epoch.pth")
    model = create_model(3, args.backbone, pre_path=os.path.join(models, "local.epoch.pth"), glo_path=global_model,
                         training=True, gamma_init=args.gamma_init).eval()
    encode = model.encode_global if args.context == "context" else _top_of(model.global_encoder)
    images, labels = _load(data, "train", args.images)
    pooled, field, field_signs = global_features(encode, images, labels, args.size_g)
    print(f"{global_model}: its {args.context} features on {len(images)} training scenes, farm vs wild:")
    for name, feats, signs in (("averaged over positions", pooled, scene_signs(labels)),
                               ("at all-field positions", field, field_signs)):
        s = separation(feats, signs)
        print(f"  {name:<24} scene difference / mean {s['ratio']:.4f}   d' {s['dprime']:.2f}   "
              f"ridge accuracy {100 * s['ridge_accuracy']:.1f}%")
    if args.steps == 0:
        return
    cue = None
    if args.cue > 0:
        direction = torch.randn(model.backbone.context_channels, generator=torch.Generator().manual_seed(args.seed))
        cue = args.cue * direction / direction.norm()
    val_images, val_labels = _load(data, "crossvali", None)
    train = [cache_patches(model, i, lb, args.size_p, args.size_g, cue) for i, lb in zip(images, labels)]
    val = [cache_patches(model, i, lb, args.size_p, args.size_g, cue) for i, lb in zip(val_images, val_labels)]
    before = blind_field_accuracy(model, val)
    train_context(model, train, args.steps, args.lr, args.seed)
    after = blind_field_accuracy(model, val)
    print(f"context modules alone, {args.steps} steps, lr {args.lr:g}, gammas from {args.gamma_init:g}, "
          f"cue {args.cue:g}: field accuracy on blind validation patches {100 * before:.1f}% -> {100 * after:.1f}% "
          f"(gamma of the large branch {model.large.gamma.item():.3f})")


if __name__ == "__main__":
    sys.exit(main())
