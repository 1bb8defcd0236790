"""Every bad input through the real entry script: one ``error:`` line naming the file or option and what
to do, exit status 2, no traceback. Inputs that can be converted safely are converted with a warning;
--skip_bad_images turns unreadable images into warnings counted in the summary."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli.helpers import list_files, run_cli, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")


def expect_error(capsys, argv: list[str], *needles: str, code: int = 2) -> str:
    """Run the CLI; check the exit status, that the last stderr line is ``error: ...`` holding every
    needle, and that no traceback was printed. Returns that line."""
    status = run_cli(*argv)
    err = capsys.readouterr().err
    assert status == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err[-3000:]
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture
def data(tiny_data, tmp_path) -> pathlib.Path:
    """A private copy of the tiny data set, free to damage."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> pathlib.Path:
    """Folder with pre.epoch.pth (weights) and pre.last.pth (training state) of a 1-epoch mode-1 run."""
    out = tmp_path_factory.mktemp("trained")
    argv = tiny_args(tiny_data, str(out), str(out / "logs"), "--task_name", "pre", "--mode", "1", "--train",
                     "--epochs", "1", "--max_images", "1")
    assert run_cli(*argv) == 0
    return out


SPLIT_DIR = {"train": "train", "crossvali": "crossvali", "test": "offical_crossvali"}


def image_file(data: pathlib.Path, split: str, index: int = 0) -> pathlib.Path:
    return data / SPLIT_DIR[split] / "Sat" / f"{split}{index:04d}_sat.png"


def mask_file(data: pathlib.Path, split: str, index: int = 0) -> pathlib.Path:
    return data / SPLIT_DIR[split] / "Label" / f"{split}{index:04d}_mask.png"


def truncate(path: pathlib.Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def train_args(data, tmp_path, *extra: str) -> list[str]:
    return tiny_args(str(data), str(tmp_path / "models"), str(tmp_path / "logs"), "--mode", "1", "--train",
                     "--epochs", "1", *extra)


def evaluate_args(data, trained, tmp_path, *extra: str) -> list[str]:
    return tiny_args(str(data), str(trained), str(tmp_path / "logs"), "--mode", "1", "--evaluate",
                     "--pre_path", "pre.epoch.pth", "--metrics_path", str(tmp_path / "metrics.json"), *extra)


def predict_args(data, trained, tmp_path, *extra: str) -> list[str]:
    return tiny_args(str(data), str(trained), str(tmp_path / "logs"), "--mode", "1", "--pre_path", "pre.epoch.pth",
                     "--prediction_path", str(tmp_path / "pred"), "--no_tta", *extra)


def run_args(where: str, data, trained, tmp_path, *extra: str) -> tuple[list[str], str]:
    """(argv, split read first) for a training, evaluation or test run."""
    if where == "train":
        return train_args(data, tmp_path, *extra), "train"
    if where == "evaluate":
        return evaluate_args(data, trained, tmp_path, *extra), "crossvali"
    return predict_args(data, trained, tmp_path, *extra), "test"


# --- data folders and splits ---------------------------------------------------------------------------

def test_missing_data_folder(tmp_path, capsys):
    expect_error(capsys, train_args(tmp_path / "nowhere", tmp_path), "data folder not found", "nowhere",
                 "--data_path")


def test_missing_split_folder(data, tmp_path, capsys):
    shutil.rmtree(data / "train")
    expect_error(capsys, train_args(data, tmp_path), "image folder not found", str(data / "train" / "Sat"))


def test_empty_split(data, trained, tmp_path, capsys):
    for name in os.listdir(data / "crossvali" / "Sat"):
        os.unlink(data / "crossvali" / "Sat" / name)
    expect_error(capsys, evaluate_args(data, trained, tmp_path), "no <id>_sat", str(data / "crossvali" / "Sat"),
                 "(it is empty)")


def test_image_without_mask(data, tmp_path, capsys):
    mask_file(data, "train", 1).unlink()
    expect_error(capsys, train_args(data, tmp_path), "have no mask", "train0001", str(data / "train" / "Label"))


# --- unreadable images: training, evaluation and test mode, in-process and in DataLoader workers --------

@pytest.mark.parametrize("where,workers", [("train", "0"), ("train", "2"), ("evaluate", "0"), ("evaluate", "2"),
                                           ("test", "0")])
def test_truncated_image(where, workers, data, trained, tmp_path, capsys):
    argv, split = run_args(where, data, trained, tmp_path, "--num_workers", workers)
    bad = image_file(data, split)
    truncate(bad)
    expect_error(capsys, argv, str(bad), "truncated", "fetch it again")


def test_zero_byte_image(data, tmp_path, capsys):
    bad = image_file(data, "train")
    bad.write_bytes(b"")
    expect_error(capsys, train_args(data, tmp_path), str(bad), "empty (0 bytes)")


def test_file_that_is_not_an_image(data, trained, tmp_path, capsys):
    bad = image_file(data, "test")
    bad.write_bytes(b"<html>404 Not Found</html>" * 20)
    expect_error(capsys, predict_args(data, trained, tmp_path), str(bad), "not a readable image")


def test_grayscale_rgba_and_16_bit_images_are_converted_with_a_warning(data, trained, tmp_path, capsys):
    grey, rgba, deep = (image_file(data, "train", i) for i in range(3))
    Image.open(grey).convert("L").save(grey)
    Image.open(rgba).convert("RGBA").save(rgba)
    Image.fromarray(np.asarray(Image.open(deep).convert("L")).astype(np.uint16) * 257).save(deep)
    assert Image.open(deep).mode.startswith("I")
    status = run_cli(*evaluate_args(data, trained, tmp_path, "--split", "train"))
    err = capsys.readouterr().err
    assert status == 0, err[-3000:]
    assert f"{grey}: grayscale image" in err
    assert f"{rgba}: image with an alpha channel" in err and "dropped the alpha channel" in err
    assert f"{deep}: I;16 image (16-bit) reduced to 8 bits" in err
    assert json.loads((tmp_path / "metrics.json").read_text())["images"] == 3


# --- bad label masks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["train", "evaluate"])
def test_mask_of_the_wrong_size(where, data, trained, tmp_path, capsys):
    argv, split = run_args(where, data, trained, tmp_path)
    bad = mask_file(data, split)
    Image.open(bad).resize((80, 72), Image.NEAREST).save(bad)
    expect_error(capsys, argv, str(bad), "is 72x80 (HxW) but its image is 96x96")


def test_mask_with_unknown_colours(data, tmp_path, capsys):
    bad = mask_file(data, "train")
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(bad)
    expect_error(capsys, train_args(data, tmp_path), str(bad), "outside the DeepGlobe palette", "RGB (0, 200, 0)")


def test_index_mask_with_an_unknown_class(data, trained, tmp_path, capsys):
    bad = mask_file(data, "crossvali")
    Image.fromarray(np.full((96, 96), 9, np.uint8)).save(bad)
    expect_error(capsys, evaluate_args(data, trained, tmp_path), str(bad), "values up to 9", "0..6")


# --- --skip_bad_images ---------------------------------------------------------------------------------

def test_skip_bad_images_in_evaluation(data, trained, tmp_path, capfd):
    # capfd, not capsys: the warning is logged in a DataLoader worker process, straight to file descriptor 2.
    bad = image_file(data, "crossvali")
    truncate(bad)
    status = run_cli(*evaluate_args(data, trained, tmp_path, "--skip_bad_images", "--num_workers", "2"))
    err = capfd.readouterr().err
    assert status == 0, err[-3000:]
    assert "Traceback" not in err
    assert f"skipping crossvali0000: image {bad} is truncated" in err
    assert "2 images (1 skipped)" in err
    scores = json.loads((tmp_path / "metrics.json").read_text())
    assert scores["skipped"] == 1 and scores["images"] == 2
    assert sum(map(sum, scores["confusion_matrix"])) == 96 * 96  # only the readable image was scored


def test_skip_bad_images_in_test_mode(data, trained, tmp_path, capsys):
    truncate(image_file(data, "test"))
    status = run_cli(*predict_args(data, trained, tmp_path, "--skip_bad_images"))
    err = capsys.readouterr().err
    assert status == 0, err[-3000:]
    assert "skipping test0000" in err and "predicted 1 images (1 skipped" in err
    assert list_files(str(tmp_path / "pred")) == ["test0001_mask.png"]


@pytest.mark.slow  # a CLI training run
def test_skip_bad_images_in_training(data, tmp_path, capsys):
    truncate(image_file(data, "train", 1))
    status = run_cli(*train_args(data, tmp_path, "--skip_bad_images", "--epochs", "2"))
    err = capsys.readouterr().err
    assert status == 0, err[-3000:]
    assert "skipping train0001" in err and "skipped 2 unreadable training images" in err


def test_skip_bad_images_when_every_image_is_bad(data, trained, tmp_path, capsys):
    for index in range(2):
        truncate(image_file(data, "crossvali", index))
    expect_error(capsys, evaluate_args(data, trained, tmp_path, "--skip_bad_images"),
                 "all 2 images", str(data / "crossvali"), "unreadable")
    assert not (tmp_path / "metrics.json").exists()


# --- checkpoints ---------------------------------------------------------------------------------------

def test_truncated_checkpoint(data, trained, tmp_path, capsys):
    half = tmp_path / "half.pth"
    raw = (trained / "pre.epoch.pth").read_bytes()
    half.write_bytes(raw[: len(raw) // 2])
    argv = evaluate_args(data, trained, tmp_path)
    argv[argv.index("--pre_path") + 1] = str(half)
    expect_error(capsys, argv, f"checkpoint {half} is truncated", "re-download")


def test_zero_byte_checkpoint(data, trained, tmp_path, capsys):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    argv = evaluate_args(data, trained, tmp_path)
    argv[argv.index("--pre_path") + 1] = str(empty)
    expect_error(capsys, argv, f"checkpoint {empty} is empty (0 bytes)")


def test_checkpoint_that_is_not_a_checkpoint(data, trained, tmp_path, capsys):
    page = tmp_path / "download.pth"
    page.write_text("<html>rate limit exceeded</html>")
    argv = evaluate_args(data, trained, tmp_path)
    argv[argv.index("--pre_path") + 1] = str(page)
    expect_error(capsys, argv, f"checkpoint {page} is not a PyTorch checkpoint")


class _Payload:
    """Pickles as a call that creates a file: what a malicious checkpoint could run on loading."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_checkpoint_with_code_in_its_pickle_is_refused_without_running_it(data, trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"module.local.gamma": torch.zeros(1), "payload": _Payload(marker)}, evil)
    argv = evaluate_args(data, trained, tmp_path)
    argv[argv.index("--pre_path") + 1] = str(evil)
    expect_error(capsys, argv, str(evil), "not loaded for safety")
    assert not marker.exists()


def test_checkpoint_file_missing(data, trained, tmp_path, capsys):
    argv = evaluate_args(data, trained, tmp_path)
    argv[argv.index("--pre_path") + 1] = "nope.pth"
    expect_error(capsys, argv, f"checkpoint {trained / 'nope.pth'} does not exist")


def test_checkpoint_of_another_backbone(data, trained, tmp_path, capsys):
    argv = evaluate_args(data, trained, tmp_path, "--backbone", "fpn_resnet50")
    expect_error(capsys, argv, "--pre_path", str(trained / "pre.epoch.pth"), "holds a fpn_resnet18 model",
                 "--backbone fpn_resnet18")


def test_checkpoint_of_another_mode(data, trained, tmp_path, capsys):
    argv = evaluate_args(data, trained, tmp_path, "--mode", "2")
    expect_error(capsys, argv, "--pre_path", str(trained / "pre.epoch.pth"), "mode-1 (pre) checkpoint",
                 "needs a mode-2 (medium) checkpoint")


def test_resume_without_a_last_checkpoint(data, tmp_path, capsys):
    expect_error(capsys, train_args(data, tmp_path, "--resume", "--task_name", "fresh"),
                 str(tmp_path / "models" / "fresh.last.pth"), "does not exist", "start without --resume")


@pytest.mark.parametrize("change,needle", [(["--backbone", "fpn_resnet50"], "not mode 1 fpn_resnet50"),
                                           (["--mode", "0"], "not mode 0 fpn_resnet18")])
def test_resume_from_a_run_of_another_backbone_or_mode(change, needle, data, trained, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(trained / "pre.last.pth", models / "pre.last.pth")
    argv = train_args(data, tmp_path, "--resume", "--task_name", "pre", "--epochs", "2", *change)
    expect_error(capsys, argv, str(models / "pre.last.pth"), "is a mode-1 fpn_resnet18 run", needle)


def test_resume_from_a_truncated_or_weights_only_last_checkpoint(data, trained, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    raw = (trained / "pre.last.pth").read_bytes()
    (models / "cut.last.pth").write_bytes(raw[: len(raw) // 3])
    expect_error(capsys, train_args(data, tmp_path, "--resume", "--task_name", "cut", "--epochs", "2"),
                 str(models / "cut.last.pth"), "truncated")
    shutil.copy(trained / "pre.epoch.pth", models / "w.last.pth")
    expect_error(capsys, train_args(data, tmp_path, "--resume", "--task_name", "w", "--epochs", "2"),
                 str(models / "w.last.pth"), "holds only weights", "--pre_path")


# --- output folders ------------------------------------------------------------------------------------

@pytest.fixture
def a_file(tmp_path) -> pathlib.Path:
    """A regular file: a folder under it cannot be created, whoever runs the tests (even root)."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_unwritable_prediction_path(data, trained, tmp_path, a_file, capsys):
    argv = predict_args(data, trained, tmp_path)
    argv[argv.index("--prediction_path") + 1] = str(a_file / "pred")
    expect_error(capsys, argv, f"cannot create output folder {a_file / 'pred'}", "--prediction_path")
    argv[argv.index("--prediction_path") + 1] = str(a_file)
    expect_error(capsys, argv, f"--prediction_path {a_file} is a file, not a folder")


def test_unwritable_model_path(data, tmp_path, a_file, capsys):
    argv = tiny_args(str(data), str(a_file / "models"), str(tmp_path / "logs"), "--mode", "1", "--train")
    expect_error(capsys, argv, f"cannot create output folder {a_file / 'models'}", "--model_path")


def test_unwritable_log_path(data, tmp_path, a_file, capsys):
    argv = tiny_args(str(data), str(tmp_path / "models"), str(a_file), "--mode", "1", "--train")
    expect_error(capsys, argv, str(a_file), "--log_path")


def test_unwritable_metrics_path(data, trained, tmp_path, a_file, capsys):
    argv = evaluate_args(data, trained, tmp_path)
    argv[argv.index("--metrics_path") + 1] = str(a_file / "metrics.json")
    expect_error(capsys, argv, f"--metrics_path {a_file / 'metrics.json'} lies under {a_file}, which is a file")
    argv[argv.index("--metrics_path") + 1] = str(tmp_path)
    expect_error(capsys, argv, f"--metrics_path {tmp_path} is a folder")


# --- option values that cannot work --------------------------------------------------------------------

@pytest.mark.parametrize("extra,needles", [
    (["--sub_batch_size", "0"], ["--sub_batch_size must be at least 1 (got 0)"]),
    (["--context", "7"], ["--context 7 is not supported", "(1, 2, 3, 4, 5)"]),
    (["--batch_size", "0"], ["--batch_size must be at least 1"]),
    (["--epochs", "0"], ["--epochs must be at least 1"]),
    (["--num_workers", "-1"], ["--num_workers must be 0 or more"]),
    (["--lr", "nan"], ["--lr must be a positive number (got nan)"]),
    (["--lr=-1e-3"], ["--lr must be a positive number"]),
    (["--weight_decay", "-1"], ["--weight_decay must be 0 or a positive number"]),
    (["--gamma_init", "inf"], ["--gamma_init must be a finite number (got inf)"]),
    (["--max_images", "0"], ["--max_images must be at least 1"]),
    (["--size_p", "abc"], ["argument --size_p: invalid int value: 'abc'"]),
    (["--mode", "9"], ["argument --mode: invalid choice: 9"]),
    (["--evaluate"], ["--train and --evaluate exclude each other"]),
    (["--mode", "4", "--glo_path", "g.pth"], ["training mode 4 needs --c_path"]),
    (["--size_p", "40"], ["patch size 40 cannot overlap", "--size_p larger than 50"]),
])
def test_option_values_that_cannot_work(extra, needles, data, tmp_path, capsys):
    expect_error(capsys, train_args(data, tmp_path, *extra), *needles)


def test_unknown_split(data, trained, tmp_path, capsys):
    expect_error(capsys, evaluate_args(data, trained, tmp_path, "--split", "valid"), "unknown split 'valid'")


def test_resume_needs_train_and_test_mode_needs_weights(data, tmp_path, capsys):
    base = tiny_args(str(data), str(tmp_path / "models"), str(tmp_path / "logs"), "--mode", "1")
    expect_error(capsys, [*base, "--resume"], "--resume only makes sense with --train")
    expect_error(capsys, base, "need --pre_path")
