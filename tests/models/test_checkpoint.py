"""Checkpoint I/O: released files (aliases, classifier, module. prefix), our files, errors, atomic saving."""

import logging
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import models.checkpoint as checkpoint
from models.backbones import build_backbone
from models.checkpoint import (
    atomic_save,
    export_weights,
    load_weights,
    read_checkpoint,
    released_name,
    save_weights,
)
from models.fctl import FCtLNet
from tools.released_layout import CLASSIFIER, LAYOUT
from utils.errors import CheckpointError

N_CLASS = 7


def raw(path: Path) -> dict:
    """The file as torch stores it, read independently of models.checkpoint."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def canonical_keys(kind: str) -> set[str]:
    return {key for key, _, canonical in LAYOUT[kind] if canonical is None and not key.startswith(CLASSIFIER)}


def assert_matches_file(tensors: dict[str, torch.Tensor], path: Path, prefix: str = "") -> None:
    """Every tensor equals the file's tensor under its released name."""
    source = raw(path)
    for name, tensor in tensors.items():
        assert torch.equal(tensor, source[released_name(prefix + name)]), name


@pytest.fixture(scope="module")
def mode4() -> FCtLNet:
    torch.manual_seed(0)
    return FCtLNet(4, "fcn8_vgg16", N_CLASS)


@pytest.fixture(scope="module")
def loaded_mode4(mode4: FCtLNet, released_checkpoints: dict[str, Path]) -> FCtLNet:
    load_weights(mode4, released_checkpoints["all"], what="--path", allow_missing=False)
    load_weights(mode4.context_encoder, released_checkpoints["medium"], what="--path_m", allow_missing=False)
    load_weights(mode4.global_encoder, released_checkpoints["global"], what="--path_g", allow_missing=False)
    return mode4


@pytest.fixture(scope="module")
def saved_mode4(loaded_mode4: FCtLNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ours") / "all.ours.pth"
    save_weights(loaded_mode4, path)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def fpn18() -> FCtLNet:
    torch.manual_seed(1)
    return FCtLNet(1, "fpn_resnet18", N_CLASS)


@pytest.fixture(scope="module")
def fpn18_file(fpn18: FCtLNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fpn") / "pre.fpn18.pth"
    save_weights(fpn18, path)
    return path


def test_read_released_file(released_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "load", spy)
    weights, meta = read_checkpoint(str(released_checkpoints["medium"]))
    assert calls == [{"map_location": "cpu", "mmap": True, "weights_only": True}]
    assert meta["kind"] == "state-dict" and "backbone" not in meta
    assert sorted(meta["ignored"]) == sorted(k for k, _, _ in LAYOUT["medium"] if k.startswith(CLASSIFIER))
    assert len(meta["aliases"]) == 52
    assert meta["aliases"]["module.big_pool5.4.weight"] == "backbone.vgg.features.28.weight"
    assert meta["aliases"]["module.pool4.0.bias"] == "backbone.vgg.features.17.bias"
    assert set(weights) == {f"backbone.{k[len('module.'):]}" if not k.startswith("module.big.") else k[len("module."):]
                            for k in canonical_keys("medium")}
    source = raw(released_checkpoints["medium"])
    assert torch.equal(weights["backbone.vgg.features.24.weight"], source["module.big_pool5.0.weight"])


def test_all_into_mode4(loaded_mode4: FCtLNet, released_checkpoints: dict[str, Path]) -> None:
    report = load_weights(loaded_mode4, released_checkpoints["all"], what="--path", allow_missing=False)
    assert len(report.loaded) == len(canonical_keys("all")) == 71
    assert report.missing == [] and report.unexpected == []
    assert len(report.ignored) == 6
    assert report.summary() == (
        f"--path: loaded 71 tensors from {released_checkpoints['all']}; ignored 6 (VGG classifier, unused)"
    )
    assert_matches_file(loaded_mode4.trainable_state_dict(), released_checkpoints["all"])
    source = raw(released_checkpoints["all"])
    features = loaded_mode4.backbone.vgg.features
    assert torch.equal(features[0].weight, source["module.pool3.0.weight"])
    assert torch.equal(features[21].bias, source["module.pool4.4.bias"])
    assert torch.equal(features[26].weight, source["module.pool5.2.weight"])
    assert torch.equal(loaded_mode4.fusion.trans.weight, source["module.trans.weight"])
    assert torch.equal(loaded_mode4.backbone.up_final.weight, source["module.up_final.weight"])
    assert not loaded_mode4.backbone.up_final.weight.requires_grad


def test_encoders_take_only_vgg_features(loaded_mode4: FCtLNet, released_checkpoints: dict[str, Path]) -> None:
    for encoder, kind in ((loaded_mode4.context_encoder, "medium"), (loaded_mode4.global_encoder, "global")):
        report = load_weights(encoder, released_checkpoints[kind], what=f"{kind} encoder", allow_missing=False)
        assert_matches_file(encoder.state_dict(), released_checkpoints[kind], prefix="backbone.")
        assert len(report.loaded) == 26 and report.missing == [] and len(report.ignored) == 6
        assert "backbone.output" in report.unexpected_groups and "backbone.up_final" in report.unexpected_groups
        assert ("big" in report.unexpected_groups) == (kind == "medium")
        assert "unused" in report.summary()
        assert not any(p.requires_grad for p in encoder.parameters())
    source = raw(released_checkpoints["medium"])
    assert torch.equal(loaded_mode4.context_encoder.vgg.features[28].weight, source["module.big_pool5.4.weight"])
    assert not torch.equal(loaded_mode4.context_encoder.vgg.features[0].weight,
                           loaded_mode4.global_encoder.vgg.features[0].weight)


@pytest.mark.parametrize(("mode", "kind"), [(2, "medium"), (0, "global")])
def test_medium_and_global_into_their_modes(mode: int, kind: str, released_checkpoints: dict[str, Path]) -> None:
    model = FCtLNet(mode, "fcn8_vgg16", N_CLASS)
    report = load_weights(model, released_checkpoints[kind], what="--path", allow_missing=False)
    assert report.missing == [] and report.unexpected == [] and len(report.ignored) == 6
    assert len(report.loaded) == len(canonical_keys(kind))
    assert_matches_file(model.trainable_state_dict(), released_checkpoints[kind])
    if mode == 2:
        assert torch.equal(model.big.gamma, raw(released_checkpoints[kind])["module.big.gamma"])


def test_wrong_mode_file_is_explained(loaded_mode4: FCtLNet, released_checkpoints: dict[str, Path]) -> None:
    before = loaded_mode4.backbone.output[0].bias.clone()
    with pytest.raises(CheckpointError) as caught:
        load_weights(loaded_mode4, released_checkpoints["medium"], what="--path", allow_missing=False)
    message = str(caught.value)
    assert "\n" not in message and str(released_checkpoints["medium"]) in message
    assert "lacks local, medium, large, fusion" in message
    assert "mode-2 (medium) checkpoint" in message and "all.epoch.pth" in message
    assert torch.equal(loaded_mode4.backbone.output[0].bias, before), "a failed load must copy nothing"
    with pytest.raises(CheckpointError, match=r"looks like a backbone-only \(mode-0 global or mode-1 pre\)"):
        load_weights(loaded_mode4, released_checkpoints["global"], what="--path", allow_missing=False)


def test_pre_model_starts_mode4(released_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(5)
    pre = FCtLNet(1, "fcn8_vgg16", N_CLASS)
    path = tmp_path / "pre.epoch50.pth"
    save_weights(pre, path)
    target = FCtLNet(4, "fcn8_vgg16", N_CLASS)
    with pytest.raises(CheckpointError, match=r"looks like a mode-1 \(pre\) checkpoint"):
        load_weights(target, path, what="--pre_path", allow_missing=False)
    report = load_weights(target, path, what="--pre_path", allow_missing=True)
    assert report.missing_groups == ["local", "medium", "large", "fusion"]
    assert report.summary().endswith("starting fresh: local, medium, large, fusion")
    assert report.unexpected == [] and report.ignored == []
    for name, tensor in pre.trainable_state_dict().items():
        assert torch.equal(target.trainable_state_dict()[name], tensor), name
    assert float(target.local.gamma.detach()) == 0.0


def test_saved_file_contents_and_round_trip(
    loaded_mode4: FCtLNet, saved_mode4: Path, released_checkpoints: dict[str, Path]
) -> None:
    stored = raw(saved_mode4)
    assert stored["_fctl"] == {"backbone": "fcn8_vgg16", "mode": 4, "n_class": N_CLASS, "correlation": "centred",
                               "classes": None, "format_version": 1}
    names = [k for k in stored if k != "_fctl"]
    assert all(k.startswith("module.") for k in names)
    assert not any(k.startswith(("module.pool", "module.vgg.classifier", "module.context_encoder",
                                 "module.global_encoder", "module.backbone.", "module.fusion.")) for k in names)
    assert len(names) == len(set(names)) == len(loaded_mode4.trainable_state_dict())
    ours, released = os.path.getsize(saved_mode4), os.path.getsize(released_checkpoints["all"])
    assert ours < 0.6 * released
    print(f"saved mode 4: {ours / 1e6:.0f} MB vs released layout {released / 1e6:.0f} MB")
    assert not list(saved_mode4.parent.glob("*.tmp-*"))
    with torch.no_grad():
        loaded_mode4.fusion.trans.weight.zero_()
        loaded_mode4.backbone.vgg.features[5].weight.zero_()
        loaded_mode4.local.gamma.fill_(3.0)
    report = load_weights(loaded_mode4, saved_mode4, what="--path", allow_missing=False)
    assert report.missing == [] and report.unexpected == [] and report.ignored == []
    assert_matches_file(loaded_mode4.trainable_state_dict(), released_checkpoints["all"])
    _, meta = read_checkpoint(saved_mode4)
    assert meta["kind"] == "fctl-weights" and meta["mode"] == 4 and meta["aliases"] == {}


def test_saved_file_loads_with_original_semantics(saved_mode4: Path) -> None:
    """The original keeps the file entries whose names its model has; aliases are the same modules."""
    original_names = {key for key, _, _ in LAYOUT["all"]}
    stored = raw(saved_mode4)
    kept = {k: v for k, v in stored.items() if k in original_names}
    assert set(stored) - set(kept) == {"_fctl"}
    assert set(kept) == canonical_keys("all")
    shapes = {key: shape for key, shape, _ in LAYOUT["all"]}
    assert all(tuple(v.shape) == shapes[k] for k, v in kept.items())


def test_backbone_mismatch(fpn18: FCtLNet, fpn18_file: Path, released_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="holds a fcn8_vgg16 model .* uses fpn_resnet18"):
        load_weights(fpn18, released_checkpoints["global"], what="--path", allow_missing=True)
    resnet50 = build_backbone("fpn_resnet50", N_CLASS, head=False)
    with pytest.raises(CheckpointError) as caught:
        load_weights(resnet50, fpn18_file, what="--path_g", allow_missing=True)
    assert "holds a fpn_resnet18 model" in str(caught.value) and "`backbone` fpn_resnet18" in str(caught.value)


def test_fpn_file_round_trip_and_encoder(fpn18: FCtLNet, fpn18_file: Path) -> None:
    with torch.no_grad():
        before = {k: v.clone() for k, v in fpn18.trainable_state_dict().items()}
    fresh = FCtLNet(1, "fpn_resnet18", N_CLASS)
    report = load_weights(fresh, fpn18_file, what="--path", allow_missing=False)
    assert report.missing == [] and report.unexpected == []
    for name, tensor in fresh.trainable_state_dict().items():
        assert torch.equal(tensor, before[name]), name
    encoder = build_backbone("fpn_resnet18", N_CLASS, head=False)
    report = load_weights(encoder, fpn18_file, what="--path_g", allow_missing=False)
    assert report.missing == []
    assert report.unexpected_groups == ["backbone.fpn", "backbone.head"]
    assert torch.equal(encoder.top[1].weight, before["backbone.top.1.weight"])


def test_batchnorm_fpn_file_is_refused(fpn18: FCtLNet, tmp_path: Path) -> None:
    """A file from the earlier BatchNorm FPN has the same parameter names and shapes; loading it into
    the GroupNorm model would silently compute something else, so it is refused."""
    state = export_weights(fpn18)
    state["module.body.bn1.running_mean"] = torch.zeros(64)
    path = tmp_path / "batchnorm.pth"
    atomic_save(state, path)
    with pytest.raises(CheckpointError, match=r"BatchNorm fpn_resnet18 .*GroupNorm.*retrain"):
        load_weights(FCtLNet(1, "fpn_resnet18", N_CLASS), path, what="--pre_path", allow_missing=False)


def test_shape_and_class_mismatch(fpn18: FCtLNet, tmp_path: Path) -> None:
    state = export_weights(fpn18)
    state["module.top.0.weight"] = torch.zeros(128, 512, 1, 1)
    del state["_fctl"]
    path = tmp_path / "bad_shape.pth"
    atomic_save(state, path)
    with pytest.raises(CheckpointError) as caught:
        load_weights(fpn18, path, what="--path", allow_missing=False)
    assert "module.top.0.weight has shape (128, 512, 1, 1) in the file but (256, 512, 1, 1)" in str(caught.value)
    five = FCtLNet(1, "fpn_resnet18", 5)
    good = tmp_path / "seven.pth"
    save_weights(fpn18, good)
    with pytest.raises(CheckpointError, match="7 classes but the mode-1 model has 5"):
        load_weights(five, good, what="--path", allow_missing=False)


def test_training_state_and_wrappers(fpn18: FCtLNet, tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    atomic_save({"model": export_weights(nn.DataParallel(fpn18)), "epoch": 3,
                 "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5}]}}, path)
    weights, meta = read_checkpoint(path)
    assert meta["kind"] == "training-state" and meta["backbone"] == "fpn_resnet18"
    assert "backbone.body.conv1.weight" in weights
    _, _, extra = read_checkpoint(path, with_extra=True)
    assert extra["epoch"] == 3 and extra["optimizer"]["param_groups"][0]["lr"] == 5e-5 and "model" not in extra
    report = load_weights(nn.DataParallel(FCtLNet(1, "fpn_resnet18", N_CLASS)), path, what="--resume",
                          allow_missing=False)
    assert report.missing == []
    wrapped = tmp_path / "wrapped.pth"
    save_weights(nn.DataParallel(fpn18), wrapped)
    assert set(raw(wrapped)) == set(export_weights(fpn18))


def test_legacy_format_is_read_with_warning(fpn18: FCtLNet, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(export_weights(fpn18), path, _use_new_zipfile_serialization=False)
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        weights, meta = read_checkpoint(path)
    assert "legacy" in caplog.text and "memory" in caplog.text
    assert meta["backbone"] == "fpn_resnet18" and "backbone.head.3.bias" in weights


class Payload:
    """A pickled object that weights_only loading must refuse."""


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("directory", "is not a file"),
        ("empty", "empty (0 bytes)"),
        ("truncated", "truncated"),
        ("garbage", "not a PyTorch checkpoint"),
        ("legacy_truncated", "truncated or corrupt"),
        ("not_dict", "holds a list, not a state dict"),
        ("non_tensor", "entry 'module.x' is a str, not a tensor"),
        ("pickled_object", "pickled Python objects"),
        ("no_tensors", "holds no model tensors"),
    ],
)
def test_unreadable_files(case: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.pth"
    small = {"module.x": torch.arange(100000, dtype=torch.float32)}
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.touch()
    elif case in ("truncated", "legacy_truncated"):
        torch.save(small, path, _use_new_zipfile_serialization=case == "truncated")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "garbage":
        path.write_bytes(b"<html>not a checkpoint</html>" * 100)
    elif case == "not_dict":
        torch.save([torch.zeros(2)], path)
    elif case == "non_tensor":
        torch.save({"module.x": "hello"}, path)
    elif case == "pickled_object":
        torch.save({"module.x": Payload()}, path)
    elif case == "no_tensors":
        torch.save({"_fctl": {"backbone": "fcn8_vgg16"}}, path)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message
    if case in ("empty", "truncated", "garbage", "legacy_truncated"):
        assert "re-download it or pick another file" in message


def test_atomic_save_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pth"
    atomic_save({"a": torch.ones(3)}, path)

    def failing_save(obj: object, handle: object) -> None:
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="No space left on device"):
        atomic_save({"a": torch.zeros(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))


def test_released_names() -> None:
    assert released_name("backbone.vgg.features.0.weight") == "module.vgg.features.0.weight"
    assert released_name("fusion.in_1.weight") == "module.in_1.weight"
    assert released_name("local.gamma") == "module.local.gamma"
    assert released_name("big.conv_value.weight") == "module.big.conv_value.weight"


def test_save_from_distributed_data_parallel(fpn18: FCtLNet, tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(fpn18)
        path = tmp_path / "ddp.pth"
        save_weights(wrapped, path)
        assert set(raw(path)) == set(export_weights(fpn18))
        report = load_weights(wrapped, path, what="--path", allow_missing=False)
        assert report.missing == [] and report.unexpected == []
    finally:
        dist.destroy_process_group()


def test_a_class_table_mismatch_says_what_differs(tmp_path):
    from models.checkpoint import save_weights, table_difference
    from models.setup import create_model

    def table(*classes):
        return {"name": "t", "classes": [{"name": n, "colour": c} for n, c in classes]}

    a = table(("bg", [0, 0, 0]), ("road", [255, 0, 0]))
    assert "class 'road' has colour [255, 0, 0] in the file, [0, 255, 0] here" == \
        table_difference(a, table(("bg", [0, 0, 0]), ("road", [0, 255, 0])))
    assert table_difference(a, table(("road", [255, 0, 0]), ("bg", [0, 0, 0]))) == "the same names in another order"
    assert table_difference(a, table(("bg", [0, 0, 0]), ("rail", [255, 0, 0]))) == "other class names"
    path = str(tmp_path / "m.pth")
    save_weights(create_model(1, "fpn_resnet18", n_class=2, class_table=a, training=True), path)
    with pytest.raises(CheckpointError, match="class 'road' has colour"):
        create_model(1, "fpn_resnet18", n_class=2, pre_path=path,
                     class_table=table(("bg", [0, 0, 0]), ("road", [0, 255, 0])))


def test_a_class_table_that_differs_only_in_its_rules_loads_with_one_warning(tmp_path, monkeypatch):
    from models import checkpoint
    from models.checkpoint import rule_difference, save_weights
    from models.setup import create_model

    classes = [{"name": "bg", "colour": [0, 0, 0]}, {"name": "road", "colour": [255, 0, 0]}]
    recorded = {"name": "t", "classes": classes, "unscored": "bg"}
    ours = {"name": "t", "classes": classes, "unscored": None, "ignore": 255}
    assert rule_difference(recorded, ours) == \
        "the unscored class is 'bg' in the file, none here and the ignore value is none in the file, 255 here"
    assert rule_difference(recorded, dict(recorded)) == ""
    path = str(tmp_path / "m.pth")
    save_weights(create_model(1, "fpn_resnet18", n_class=2, class_table=recorded, training=True), path)
    lines: list[str] = []
    monkeypatch.setattr(checkpoint.log, "warning", lambda text, *args: lines.append(text % args))
    create_model(1, "fpn_resnet18", n_class=2, pre_path=path, class_table=ours)
    assert len(lines) == 1 and "the unscored class is 'bg' in the file, none here" in lines[0]


def test_a_class_count_mismatch_names_both_tables(tmp_path):
    from models.checkpoint import save_weights
    from models.setup import create_model

    def table(name, *names):
        return {"name": name, "classes": [{"name": n, "colour": [i, i, i]} for i, n in enumerate(names)]}

    path = str(tmp_path / "roads.pth")
    save_weights(create_model(1, "fpn_resnet18", n_class=3, class_table=table("roads", "other", "road", "track"),
                              training=True), path)
    with pytest.raises(CheckpointError, match=r"trained for 3 classes \[other, road, track\] \(roads\) but the mode-1 "
                                              r"model has 2 classes \[bg, building\] \(mine\)"):
        create_model(1, "fpn_resnet18", n_class=2, pre_path=path, class_table=table("mine", "bg", "building"))
