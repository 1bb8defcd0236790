"""tools/context_probe.py: its separation measure finds a planted scene signal and only that, the
learn probe trains the context modules and nothing else, the clean cue carries the scene's sign, and
a missing demo folder is one error line."""

import torch

from dataset.synthetic import AGRICULTURE, BARREN, RANGELAND, URBAN
from models.fctl import FCtLNet
from tools import context_probe


def _features(planted: float, n: int = 200, channels: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    signs = torch.tensor([1.0, -1.0]).repeat(n // 2)
    direction = torch.randn(channels, generator=generator)
    noise = torch.randn(n, channels, generator=generator)
    return 10.0 + noise + planted * signs[:, None] * direction, signs


def test_separation_finds_a_planted_signal():
    s = context_probe.separation(*_features(planted=2.0))
    assert s["ridge_accuracy"] == 1.0
    assert s["dprime"] > 5


def test_separation_of_noise_is_near_chance():
    s = context_probe.separation(*_features(planted=0.0))
    assert s["ridge_accuracy"] < 0.7
    assert s["dprime"] < 1
    assert s["ratio"] < 0.05


def _scene(label_value: int, settlement: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    label = torch.full((48, 48), label_value, dtype=torch.uint8)
    label[:8, :8] = settlement
    return image, label


def test_cue_carries_the_scene_sign():
    torch.manual_seed(0)
    model = FCtLNet(3, backbone="fpn_resnet18").eval()
    cue = torch.ones(model.backbone.context_channels)
    for scene, sign in ((_scene(AGRICULTURE, URBAN), 1.0), (_scene(RANGELAND, BARREN), -1.0)):
        plain = context_probe.cache_patches(model, *scene, 48, 32, None)["global_context"]
        cued = context_probe.cache_patches(model, *scene, 48, 32, cue)["global_context"]
        assert torch.allclose(cued - plain, torch.full_like(plain, sign))


def test_learn_probe_trains_only_the_context_modules():
    torch.manual_seed(0)
    model = FCtLNet(3, backbone="fpn_resnet18", gamma_init=1.0).eval()
    items = [context_probe.cache_patches(model, *_scene(AGRICULTURE, URBAN), 48, 32, None),
             context_probe.cache_patches(model, *_scene(RANGELAND, BARREN), 48, 32, None),
             context_probe.cache_patches(model, *_scene(RANGELAND, RANGELAND), 48, 32, None)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    context_probe.train_context(model, items, steps=2, lr=1e-2, seed=0)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved, "nothing trained"
    assert all(k.split(".")[0] in context_probe.CONTEXT_MODULES for k in moved), moved
    assert any(k.startswith("large.") for k in moved)
    assert 0.0 <= context_probe.blind_field_accuracy(model, items) <= 1.0


def test_missing_demo_folder_is_one_error_line(tmp_path, capsys):
    assert context_probe.main(["--demo", str(tmp_path / "none"), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "local.epoch.pth" in err[0]
