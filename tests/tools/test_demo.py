"""tools/demo.py (make demo) on bad input: one error line and exit status 2, never a traceback; its data
always matches the options given."""

import os

import pytest

from tools import demo


def test_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert demo.main(["--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {target} is a file, not a folder; pass a folder (it is created if missing)"]


@pytest.mark.parametrize("option", ["--train_images", "--val_images", "--epochs", "--global_epochs"])
def test_counts_below_one(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        demo.main(["--out", str(tmp_path), option, "0"])
    assert stop.value.code == 2
    assert f"{option} must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["demo", "demo_refine"])
def test_negative_detail(module, tmp_path, capsys):
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"tools.{module}").main(["--out", str(tmp_path), "--detail", "-1"])
    assert stop.value.code == 2
    assert "--detail must be 0 or more" in capsys.readouterr().err


@pytest.mark.slow  # runs training stages through the command line
def test_failing_stage_stops_with_one_line_and_data_follows_the_options(tmp_path, capsys):
    # A patch size the backbone rejects: the first stage exits 2 after the data is written.
    args = ["--out", str(tmp_path), "--size", "64", "--size_p", "20", "--val_images", "1"]
    assert demo.main(args + ["--train_images", "3"]) == 2
    assert demo.main(args + ["--train_images", "2"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "error: the demo stopped: train_deep_globe.py exited with status 2 (its error line is above)"
    assert sorted(os.listdir(tmp_path / "data" / "train" / "Sat")) == ["train0000_sat.png", "train0001_sat.png"]


@pytest.mark.slow  # the five Inria stage scripts, their evaluations and the test script, chained on the CPU
def test_the_inria_stage_scripts_chain(tmp_path, capsys):
    from tools import demo_inria

    assert demo_inria.main(["--out", str(tmp_path), "--size", "96", "--size_p", "64", "--train_images", "2",
                            "--val_images", "1"]) == 0
    out = capsys.readouterr().out
    for task in ("Bfcn", "B10", "B15", "all", "refine"):
        assert (tmp_path / "models" / f"{task}.epoch.pth").exists()
        assert any(line.startswith(f"{task} ") for line in out.splitlines()), out
    assert sorted(os.listdir(tmp_path / "predictions")) == ["test0000_mask.png", "test0001_mask.png"]
    # The full model started from all of B10 (its trained medium branch included).
    log = (tmp_path / "runs" / "all" / "train.log").read_text()
    assert "B10.epoch.pth; starting fresh: local, large, fusion" in log
