"""The mapping user's loop on the command line: prepare scenes with vector labels, train, evaluate."""

from __future__ import annotations

import json

from dataset.synthetic_scenes import make_scenes
from tests.cli.helpers import run_cli, tiny_args
from tools import prepare_scenes


def test_prepare_train_and_evaluate_without_naming_the_classes(tmp_path, capsys):
    source = make_scenes(str(tmp_path / "src"), n_scenes=3, size=192, cell=32, seed=1)
    data = str(tmp_path / "data")
    argv = ["--scenes", str(tmp_path / "src" / "scenes"), "--labels", source["vector"], source["raster"],
            "--class_field", "class", "--classes", source["classes"], "--dst", data, "--tile_size", "64",
            "--split_by", "block", "--block_tiles", "1", "--val", "0.2", "--test", "0.2", "--bands", "1,2,3"]
    assert prepare_scenes.main(argv) == 0
    out = capsys.readouterr().out
    assert "train " in out and "dropped" in out and "--data_path" in out
    models, logs = str(tmp_path / "models"), str(tmp_path / "logs")
    common = tiny_args(data, models, logs, "--mode", "0", "--task_name", "g")
    assert run_cli(*common, "--train", "--epochs", "1") == 0
    assert run_cli(*common, "--evaluate", "--pre_path", "g.epoch.pth") == 0
    metrics = json.loads((tmp_path / "logs" / "g" / "metrics_crossvali.json").read_text())
    assert metrics["classes"] == ["bare", "crop", "sheet"]
    matrix = metrics["confusion_matrix"]
    labelled = json.loads((tmp_path / "data" / "dataset.json").read_text())["splits"]["crossvali"]["labelled_pixels"]
    assert sum(map(sum, matrix)) == sum(labelled.values())  # the unlabelled pixels are counted nowhere
    # Predicting a scene: the class table again comes from --data_path's dataset.json.
    out = tmp_path / "pred"
    assert run_cli(*common, "--input", source["scenes"][0], "--bands", "1,2,3", "--pre_path", "g.epoch.pth",
                   "--prediction_path", str(out), "--no_tta") == 0
    import rasterio

    with rasterio.open(out / "scene_0_mask.tif") as mask, rasterio.open(source["scenes"][0]) as scene:
        assert (mask.height, mask.width, mask.crs) == (scene.height, scene.width, scene.crs)
        assert int(mask.read(1).max()) <= 2


def test_a_bad_input_is_one_error_line(tmp_path, capsys):
    source = make_scenes(str(tmp_path / "src"), n_scenes=2, size=128, cell=32, seed=2)
    argv = ["--scenes", *source["scenes"], "--labels", source["vector"], "--classes", source["classes"],
            "--dst", str(tmp_path / "data"), "--class_field", "nope"]
    assert prepare_scenes.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: vector labels") and "--class_field" in err[-1]
