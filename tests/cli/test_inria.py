"""The Inria release and class tables of your own through the entry script."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from dataset.classes import table_from_dict
from option import OptionError, parse_options
from tests.cli.helpers import list_files, run_cli, tiny_args


def _inria_args(data: str, released: dict, logs: str, *extra: str) -> list[str]:
    return ["--dataset", "inria", "--data_path", data, "--model_path", str(released["B10"].parent),
            "--log_path", logs, "--mode", "5", "--pre_path", "all.epoch.pth", "--c_path", "B10.epoch.pth",
            "--c2_path", "B15.epoch.pth", "--size_p", "64", "--device", "cpu", "--num_workers", "0",
            "--sub_batch_size", "8", *extra]


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), lines
    assert not any("Traceback" in line for line in lines)
    return lines[-1]


def test_released_inria_files_predict_white_buildings_on_black(inria_data, inria_checkpoints, tmp_path, capsys):
    out = tmp_path / "pred"
    assert run_cli(*_inria_args(inria_data, inria_checkpoints, str(tmp_path / "logs"),
                                "--prediction_path", str(out))) == 0
    assert list_files(str(out)) == ["test0000_mask.png", "test0001_mask.png"]
    for name in list_files(str(out)):
        mask = np.asarray(Image.open(out / name))
        assert mask.shape == (64, 64, 3)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert (mask[..., 0] == mask[..., 1]).all() and (mask[..., 0] == mask[..., 2]).all()
    err = capsys.readouterr().err
    assert "TTA on" in err and "loaded 71 tensors" in err


def test_released_inria_files_evaluate_the_building_iou(inria_data, inria_checkpoints, tmp_path, capsys):
    metrics = tmp_path / "m.json"
    args = _inria_args(inria_data, inria_checkpoints, str(tmp_path / "logs"), "--evaluate", "--metrics_path",
                       str(metrics))
    assert run_cli(*args) == 0
    scores = json.loads(metrics.read_text())
    assert scores["dataset"] == "inria" and scores["classes"] == ["background", "building"]
    assert scores["miou"] == scores["iou"][1] and len(scores["f1_per_class"]) == 2
    assert scores["f1"] == scores["f1_per_class"][1]
    assert sum(map(sum, scores["confusion_matrix"])) == 2 * 64 * 64
    err = capsys.readouterr().err
    assert "building" in err and "(without background)" in err
    # The original's option names give the same run.
    aliased = tmp_path / "aliased.json"
    args = [a.replace("--c_path", "--glo_path_10").replace("--c2_path", "--glo_path_15") for a in args]
    args[args.index("--dataset") + 1] = "2"
    args[args.index("--metrics_path") + 1] = str(aliased)
    assert run_cli(*args, "--context10", "2", "--context15", "3") == 0
    assert json.loads(aliased.read_text())["confusion_matrix"] == scores["confusion_matrix"]


def test_released_b10_and_b15_run_in_mode_2(inria_data, inria_checkpoints, tmp_path):
    for name, context in (("B10.epoch.pth", "2"), ("B15.epoch.pth", "3")):
        metrics = tmp_path / f"{name}.json"
        args = _inria_args(inria_data, inria_checkpoints, str(tmp_path / "logs"), "--evaluate", "--metrics_path",
                           str(metrics), "--mode", "2", "--pre_path", name, "--context", context)
        args = [a for i, a in enumerate(args) if a not in ("--c_path", "--c2_path")
                and args[i - 1] not in ("--c_path", "--c2_path")]
        assert run_cli(*args) == 0
        assert len(json.loads(metrics.read_text())["iou"]) == 2


def test_released_inria_files_need_the_plain_correlation(inria_data, inria_checkpoints, tmp_path, capsys):
    args = _inria_args(inria_data, inria_checkpoints, str(tmp_path / "logs"), "--evaluate", "--correlation", "centred")
    assert run_cli(*args) == 2
    line = _error_line(capsys)
    assert "--pre_path" in line and "plain correlation" in line and "pass --correlation plain" in line


def test_dataset_defaults_and_the_original_names():
    s = parse_options(["--dataset", "2", "--pre_path", "x.pth", "--mode", "5", "--glo_path_10", "a.pth",
                       "--glo_path_15", "b.pth"])
    assert (s.dataset.name, s.dataset.correlation, s.pipeline.context, s.pipeline.context2, s.paths.data_path) == \
        ("inria", "plain", 2, 3, "data_inria")
    assert (s.paths.c_path, s.paths.c2_path, s.dataset.classes.n_class, s.training.save_each_epoch_from) == \
        (os.path.join("saved_models", "a.pth"), os.path.join("saved_models", "b.pth"), 2, 0)
    s = parse_options(["--dataset", "1", "--pre_path", "x.pth"])
    assert (s.dataset.name, s.dataset.correlation, s.pipeline.context, s.paths.data_path, s.dataset.classes.n_class) == \
        ("deepglobe", "centred", 3, "data", 7)
    s = parse_options(["--dataset", "inria", "--pre_path", "x.pth", "--context10", "3", "--correlation", "centred"])
    assert (s.pipeline.context, s.dataset.correlation) == (3, "centred")


@pytest.mark.parametrize(("argv", "message"), [
    (["--dataset", "custom"], "--dataset custom needs --classes FILE"),
    (["--dataset", "inria", "--classes", "t.json"], "--classes is for --dataset custom"),
    (["--mode", "5", "--c2_path", "b.pth"], "mode 5 needs --c_path .*B10.epoch.pth"),
    (["--mode", "5", "--c_path", "a.pth"], "mode 5 needs --c2_path .*B15.epoch.pth"),
    (["--train", "--mode", "5", "--c_path", "a.pth"], "run train_inria_B15.sh first"),
    (["--context2", "6"], "--context2 6 is not supported"),
    (["--train", "--start_epoch", "50", "--epochs", "50"], "--start_epoch must be"),
])
def test_option_errors(argv, message):
    with pytest.raises(OptionError, match=message):
        parse_options(["--pre_path", "x.pth", *argv])


def _custom_data(root, table, n_images: int = 2, size: int = 64, seed: int = 0) -> None:
    """Random images with colour masks in the table's colours, in the split layout."""
    rng = np.random.default_rng(seed)
    for split in ("train", "crossvali", "offical_crossvali"):
        for sub in ("Sat", "Label"):
            os.makedirs(os.path.join(root, split, sub), exist_ok=True)
        for i in range(n_images):
            index = (np.add.outer(np.arange(size) // 8, np.arange(size) // 8) + i) % table.n_class
            image = (table.colours[index] * 0.8 + rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(root, split, "Sat", f"{split}{i}_sat.png"))
            Image.fromarray(table.colours[index]).save(os.path.join(root, split, "Label", f"{split}{i}_mask.png"))


def _write_table(path, n: int) -> None:
    colours = [[(47 * i + 5) % 256, (89 * i + 30) % 256, (23 * i + 200) % 256] for i in range(n)]
    path.write_text(json.dumps({"name": f"own{n}", "classes": [{"name": f"class{i}", "colour": c}
                                                                for i, c in enumerate(colours)],
                                "unscored": None}))


@pytest.mark.parametrize("n", [3, pytest.param(12, marks=pytest.mark.slow)])
def test_own_classes_train_evaluate_and_predict(tmp_path, capsys, n):
    table_path, other_path = tmp_path / "table.json", tmp_path / "other.json"
    _write_table(table_path, n)
    _write_table(other_path, 4)
    table = table_from_dict(json.loads(table_path.read_text()), str(table_path))
    data, models, logs = str(tmp_path / "data"), str(tmp_path / "models"), str(tmp_path / "logs")
    _custom_data(data, table)
    own = ["--dataset", "custom", "--classes", str(table_path)]
    assert run_cli(*tiny_args(data, models, logs, *own, "--train", "--val", "--epochs", "1", "--mode", "1",
                              "--task_name", "own")) == 0
    metrics = tmp_path / "m.json"
    weights = ["--mode", "1", "--pre_path", "own.epoch.pth"]
    assert run_cli(*tiny_args(data, models, logs, *own, *weights, "--evaluate", "--metrics_path", str(metrics))) == 0
    scores = json.loads(metrics.read_text())
    assert len(scores["iou"]) == n and scores["classes"] == list(table.names)
    assert scores["miou"] == pytest.approx(sum(scores["iou"]) / n)  # no unscored class in this table
    out = tmp_path / "pred"
    assert run_cli(*tiny_args(data, models, logs, *own, *weights, "--prediction_path", str(out), "--no_tta")) == 0
    colours = {tuple(c) for c in table.colours.tolist()}
    for name in list_files(str(out)):
        used = np.unique(np.asarray(Image.open(out / name).convert("RGB")).reshape(-1, 3), axis=0)
        assert {tuple(c) for c in used.tolist()} <= colours
    capsys.readouterr()
    # The checkpoint records its classes: another table, or DeepGlobe's, is a one-line error.
    other = ["--dataset", "custom", "--classes", str(other_path)]
    assert run_cli(*tiny_args(data, models, logs, *other, *weights, "--evaluate")) == 2
    line = _error_line(capsys)
    assert f"trained for {n} classes" in line or "was trained for the classes" in line
    assert run_cli(*tiny_args(data, models, logs, *weights, "--evaluate")) == 2
    assert "classes" in _error_line(capsys)
