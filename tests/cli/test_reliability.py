"""Reliability, round two, through the real entry points: weights that load but cannot work, devices
this machine lacks, resources that run out (a real small tmpfs in a private mount namespace), signals
from schedulers (real SIGTERM / SIGHUP to a real process), resume edge cases and the prepare tool.

Every case checks the exit status, one ``error:`` (or warning) line naming the culprit, no traceback,
and that nothing on disk was lost or half-written."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import read_checkpoint, save_weights
from models.fctl import FCtLNet
from tests.cli.helpers import list_files, run_cli, tiny_args
from tests.cli.test_errors import expect_error
from tools import prepare_deepglobe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(data, models, *extra: str) -> list[str]:
    return tiny_args(str(data), str(models), str(pathlib.Path(models).parent / "logs"), "--task_name", "t",
                     "--mode", "1", "--train", "--epochs", "1", *extra)


def evaluate_args(data, models, tmp_path, *extra: str) -> list[str]:
    return tiny_args(str(data), str(models), str(tmp_path / "logs"), "--mode", "1", "--evaluate",
                     "--metrics_path", str(tmp_path / "metrics.json"), *extra)


@pytest.fixture
def weights(tmp_path) -> pathlib.Path:
    """A folder with a seeded, untrained mode-1 fpn_resnet18 model as w.pth."""
    folder = tmp_path / "w"
    folder.mkdir()
    torch.manual_seed(0)
    save_weights(FCtLNet(1, "fpn_resnet18"), str(folder / "w.pth"))
    return folder


def rewrite(path: pathlib.Path, change) -> None:
    """Apply ``change(state)`` to a weights file's tensors (all but the _fctl entry) and save it again."""
    state = torch.load(path, weights_only=True)
    for key, value in list(state.items()):
        if isinstance(value, torch.Tensor):
            state[key] = change(key, value)
    torch.save(state, path)


# --- 1. checkpoint values, precision and stage --------------------------------------------------------

def test_weights_holding_nan_are_refused_at_load_time(tiny_data, weights, tmp_path, capsys):
    rewrite(weights / "w.pth", lambda k, v: v.fill_(float("nan")) if k.endswith("body.conv1.weight") else v)
    line = expect_error(capsys, evaluate_args(tiny_data, weights, tmp_path, "--pre_path", "w.pth"),
                        "--pre_path", str(weights / "w.pth"), "body.conv1.weight", "NaN or infinite")
    assert "mIoU" not in line and not (tmp_path / "metrics.json").exists()
    # As a training start it is the same line, before any step (not a diverging loss later).
    models = tmp_path / "models"
    expect_error(capsys, train_args(tiny_data, models, "--pre_path", str(weights / "w.pth")), "NaN or infinite")
    assert list_files(str(models)) == []


def test_half_precision_weights_are_converted_and_integer_ones_refused(tiny_data, weights, tmp_path, capsys):
    rewrite(weights / "w.pth", lambda k, v: v.half() if v.is_floating_point() else v)
    assert run_cli(*evaluate_args(tiny_data, weights, tmp_path, "--pre_path", "w.pth")) == 0
    assert "converted" in capsys.readouterr().err and (tmp_path / "metrics.json").exists()
    rewrite(weights / "w.pth", lambda k, v: v.long() if k.endswith("body.conv1.weight") else v.float())
    expect_error(capsys, evaluate_args(tiny_data, weights, tmp_path, "--pre_path", "w.pth"), "body.conv1.weight",
                 "torch.int64 values")


def test_a_file_of_another_stage_is_refused(tiny_data, tmp_path, capsys):
    folder = tmp_path / "w"
    folder.mkdir()
    torch.manual_seed(0)
    save_weights(FCtLNet(4, "fpn_resnet18"), str(folder / "all.pth"))
    save_weights(FCtLNet(1, "fpn_resnet18"), str(folder / "pre.pth"))
    # A mode-4 file holds everything a mode-1 model needs, but it is another model.
    expect_error(capsys, evaluate_args(tiny_data, folder, tmp_path, "--pre_path", "all.pth"),
                 "--pre_path", "is a mode-4 (all) checkpoint but the mode-1 model needs a mode-1 (pre) checkpoint")
    # The frozen medium-context encoder comes from a mode-2 model, not from the pre model.
    expect_error(capsys, tiny_args(str(tiny_data), str(folder), str(tmp_path / "logs"), "--mode", "4", "--evaluate",
                                   "--pre_path", "all.pth", "--c_path", "pre.pth", "--glo_path", "pre.pth"),
                 "--c_path", "is a mode-1 (pre) checkpoint", "comes from a mode-2 (medium) checkpoint")


# --- 2. devices ----------------------------------------------------------------------------------------

BAD_DEVICES = ["meta", "mps", "xpu:0", "cpu:1", "gpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_every_device_works_or_says_what_this_machine_has(device, tiny_data, tmp_path, capsys):
    argv = train_args(tiny_data, tmp_path / "models")
    argv[argv.index("--device") + 1] = device
    expect_error(capsys, argv, f"--device {device!r}", "this machine has cpu")
    assert list_files(str(tmp_path / "models")) == []


# --- 3. resources that run out --------------------------------------------------------------------------

def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_namespace = pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root) to mount a small tmpfs")


def in_small_tmpfs(mount_point: str, size: str, argv: list[str], timeout: float = 600,
                   after: str = "") -> subprocess.CompletedProcess:
    """Run ``argv`` in a private mount namespace where ``mount_point`` is a fresh tmpfs of ``size``; then
    the shell command ``after`` (its output on stdout), in the same namespace, before the tmpfs is gone."""
    run = f'"$@"; code=$?; {after}; exit $code' if after else 'exec "$@"'
    script = f'mkdir -p "{mount_point}" && mount -t tmpfs -o size={size} tmpfs "{mount_point}" && {run}'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def cli(*argv: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train_deep_globe.py"), *argv]


def assert_one_error_line(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), out.stderr[-3000:]
    for needle in needles:
        assert needle in line, line
    return line


@pytest.mark.slow  # fault injection: a real tmpfs, a CLI process
@needs_namespace
@pytest.mark.parametrize("size, needle", [("1m", "needed; free space there"), ("24m", "for this model's checkpoints")])
def test_a_full_disk_for_checkpoints_stops_before_the_first_epoch(size, needle, tiny_data, tmp_path):
    models = str(tmp_path / "models")
    out = in_small_tmpfs(models, size, cli(*train_args(tiny_data, models)))
    assert_one_error_line(out, "--model_path", models, "MB free", needle)
    assert "epoch 1/1 loss" not in out.stderr  # stopped at start-up, not after an epoch


@pytest.mark.slow  # fault injection: a real tmpfs, a CLI process
@needs_namespace
def test_a_full_disk_for_logs_stops_at_start_up(tiny_data, tmp_path):
    logs = str(tmp_path / "logs")
    out = in_small_tmpfs(logs, "1m", cli(*tiny_args(str(tiny_data), str(tmp_path / "models"), logs, "--train",
                                                        "--epochs", "1")))
    assert_one_error_line(out, "--log_path", "MB free")
    assert not (tmp_path / "models").exists()


@pytest.mark.slow  # fault injection: a real tmpfs, a CLI process
@needs_namespace
def test_small_shared_memory_with_workers_is_one_line(tmp_path):
    from dataset.synthetic import generate

    data = str(tmp_path / "data")
    generate(data, n_train=4, n_val=1, n_test=1, size=320, seed=0)  # 300 KB an image: more than 1 MB in flight
    argv = tiny_args(data, str(tmp_path / "models"), str(tmp_path / "logs"), "--train", "--epochs", "1",
                     "--size_p", "128", "--num_workers", "2")
    out = in_small_tmpfs("/dev/shm", "1m", cli(*argv))
    assert_one_error_line(out, "shared memory", "/dev/shm", "--num_workers 0")


@pytest.mark.slow  # fault injection: a real tmpfs
@needs_namespace
def test_tensorboard_and_the_log_file_on_a_disk_that_fills_up_cost_only_the_logs(tmp_path):
    """SafeWriter and the log file on a 2 MB tmpfs that the events fill: one warning each, no traceback,
    and the program goes on to its end."""
    folder = str(tmp_path / "full")
    program = (
        "import logging, torch\n"
        "from utils.logging import SafeWriter, setup_logging\n"
        f"log = setup_logging(0, {folder!r} + '/run.log', rename=lambda n: '--' + n)\n"
        f"writer = SafeWriter({folder!r} + '/tb', flush_secs=1)\n"
        "noise = torch.rand(3, 512, 512)\n"
        "for step in range(60):\n"
        "    writer.add_image('x', noise, step)\n"
        "    writer.add_scalar('loss', 1.0, step)\n"
        "    log.info('step %d ' % step + 'x' * 50000)\n"
        "writer.close()\n"
        "print('finished')\n"
    )
    out = in_small_tmpfs(folder, "2m", [sys.executable, "-c", program], timeout=300)
    assert out.returncode == 0 and "finished" in out.stdout, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Logging error" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("tensorboard logs in") == 1, out.stderr[-3000:]
    assert "free space in --log_path" in out.stderr


# --- 4. signals from schedulers -------------------------------------------------------------------------

def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.slow  # a real training process, signalled
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_training_like_ctrl_c(signum, status, tiny_data, tmp_path):
    models = tmp_path / "models"
    argv = train_args(tiny_data, models, "--epochs", "50", "--num_workers", "2", "--batch_size", "1")
    proc = subprocess.Popen(cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 300
    while not (models / "t.last.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signum)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert line.startswith(f"error: interrupted ({name}); {models / 't.last.pth'} holds the end of epoch "), line
    assert "continue with --resume" in line
    _, meta, extra = read_checkpoint(models / "t.last.pth", with_extra=True)
    assert meta["kind"] == "training-state" and extra["epoch"] >= 1
    time.sleep(1)
    assert _processes_mentioning(str(models)) == []  # no DataLoader worker lingers


@pytest.mark.slow  # a real evaluation process, signalled
def test_sigterm_during_evaluation_says_nothing_is_half_written(weights, tmp_path):
    from dataset.synthetic import generate

    data = str(tmp_path / "data")
    generate(data, n_train=1, n_val=4, n_test=1, size=256, seed=0)  # 225 patches a view: long enough to signal
    log = tmp_path / "stderr.txt"
    argv = evaluate_args(data, weights, tmp_path, "--pre_path", "w.pth", "--tta", "--num_workers", "2")
    with open(log, "w") as err_file:
        proc = subprocess.Popen(cli(*argv), stdout=subprocess.DEVNULL, stderr=err_file, cwd=ROOT,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        deadline = time.time() + 300
        while "evaluate: 0/4" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == ("error: interrupted (SIGTERM); files already written are complete, "
                                            "none is half-written")
    assert not (tmp_path / "metrics.json").exists()
    time.sleep(1)
    assert _processes_mentioning(data) == []


# --- 5. resume edge cases -------------------------------------------------------------------------------

@pytest.mark.slow  # two CLI training runs
def test_resume_when_every_epoch_is_done_names_only_files_that_exist(tiny_data, tmp_path, capsys):
    models = tmp_path / "models"
    assert run_cli(*train_args(tiny_data, models)) == 0
    (models / "t.epoch.pth").unlink()  # as if killed between the last epoch's writes
    capsys.readouterr()
    assert run_cli(*train_args(tiny_data, models, "--resume")) == 0
    err = capsys.readouterr().err
    assert "nothing to do: all 1 epochs are already done" in err
    assert f"weights {models / 't.epoch.pth'}" in err and (models / "t.epoch.pth").exists()
    a, b = read_checkpoint(models / "t.epoch.pth")[0], read_checkpoint(models / "t.last.pth")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # four CLI runs
def test_resume_refuses_fewer_epochs_than_done_and_changed_fixed_settings(tiny_data, tmp_path, capsys):
    models = tmp_path / "models"
    assert run_cli(*train_args(tiny_data, models, "--epochs", "2")) == 0
    before = {name: (models / name).read_bytes() for name in list_files(str(models))}
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "1", "--resume"), "holds 2 epochs",
                 "--epochs 2 or more")
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "3", "--resume", "--batch_size", "1"),
                 "was trained with --batch_size 2, this run asks for 1", "start a new --task_name")
    expect_error(capsys, train_args(tiny_data, models, "--epochs", "3", "--resume", "--seed", "9"), "--seed 0")
    assert {name: (models / name).read_bytes() for name in list_files(str(models))} == before


@pytest.mark.slow  # fp16 autocast on the CPU, two CLI runs
def test_resume_may_change_precision_workers_sub_batch_and_learning_rate(tiny_data, tmp_path, capsys):
    models = tmp_path / "models"
    assert run_cli(*train_args(tiny_data, models)) == 0
    # Before: an fp16 resume of a run saved without fp16 failed loading the empty loss-scaler state.
    assert run_cli(*train_args(tiny_data, models, "--epochs", "2", "--resume", "--amp", "--amp_dtype", "fp16",
                               "--sub_batch_size", "3", "--num_workers", "1", "--lr", "1e-5")) == 0
    _, _, extra = read_checkpoint(models / "t.last.pth", with_extra=True)
    assert extra["epoch"] == 2
    assert "loss scaler starts fresh" in capsys.readouterr().err


# --- 6. the prepare tool --------------------------------------------------------------------------------

def _download(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    src, splits = tmp_path / "download", tmp_path / "splits"
    src.mkdir()
    splits.mkdir()
    for split, key in (("train", "1"), ("crossvali", "2"), ("test", "3")):
        (splits / f"{split}.txt").write_text(f"{key}_sat.jpg\n")
        Image.fromarray(np.full((8, 8, 3), int(key) * 40, np.uint8)).save(src / f"{key}_sat.jpg")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / f"{key}_mask.png")
    return src, splits


def test_prepare_into_an_unwritable_dst_is_one_line_and_writes_nothing(tmp_path, capsys):
    src, splits = _download(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    code = prepare_deepglobe.main(["--src", str(src), "--dst", str(a_file / "data"), "--splits_dir", str(splits)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "--dst" in line and str(a_file / "data") in line, line
    assert a_file.read_text() == "not a folder"


def test_prepare_refuses_two_different_files_for_one_id(tmp_path, capsys):
    src, splits = _download(tmp_path)
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(src / "2_sat.png")
    (src / "train").mkdir()
    shutil.copy(src / "1_sat.jpg", src / "train" / "1_sat.jpg")  # the same bytes twice: fine
    dst = tmp_path / "data"
    code = prepare_deepglobe.main(["--src", str(src), "--dst", str(dst), "--splits_dir", str(splits)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: two different files for one id"), line
    assert str(src / "2_sat.jpg") in line and str(src / "2_sat.png") in line
    assert not dst.exists()
