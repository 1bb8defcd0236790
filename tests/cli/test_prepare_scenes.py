"""The mapping user's loop on the command line: prepare scenes with vector labels, train, evaluate."""

from __future__ import annotations

import glob
import json

import pytest
import rasterio
import torch

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


def test_inputs_inside_the_destination_are_refused_before_anything_is_deleted(tmp_path, capsys):
    """Re-tiling an earlier preparation's tiles into the same folder would delete them first."""
    import hashlib
    import pathlib

    source = make_scenes(str(tmp_path / "src"), n_scenes=2, size=128, cell=32, seed=2)
    data = tmp_path / "data"
    common = ["--class_field", "class", "--classes", source["classes"], "--tile_size", "64", "--split_by", "block",
              "--block_tiles", "1", "--val", "0.3", "--bands", "1,2,3"]
    assert prepare_scenes.main(["--scenes", str(tmp_path / "src" / "scenes"), "--labels", source["vector"],
                                source["raster"], "--dst", str(data), *common]) == 0
    before = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in data.rglob("*") if p.is_file()}
    tiles = sorted(glob.glob(str(data / "train" / "Sat" / "*.tif")))
    capsys.readouterr()
    assert prepare_scenes.main(["--scenes", *tiles, "--labels", source["vector"], "--dst", str(data), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: scene {tiles[0]} lies in --dst {data}") and len(err) == 1
    after = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in data.rglob("*") if p.is_file()}
    assert after == before and pathlib.Path(tiles[0]).exists()


@pytest.fixture(scope="module")
def four_bands(tmp_path_factory):
    """A folder prepared with the near-infrared band: (scenes, data folder)."""
    root = tmp_path_factory.mktemp("four")
    source = make_scenes(str(root / "src"), n_scenes=3, size=160, cell=32, seed=4)
    data = str(root / "data")
    assert prepare_scenes.main(["--scenes", *source["scenes"], "--labels", source["vector"], source["raster"],
                                "--class_field", "class", "--classes", source["classes"], "--dst", data,
                                "--tile_size", "80", "--split_by", "block", "--block_tiles", "1", "--val", "0.2",
                                "--test", "0.2", "--bands", "1,2,3,4"]) == 0
    return source, data


def test_four_band_tiles_and_statistics(four_bands):
    _, data = four_bands
    with open(f"{data}/dataset.json", encoding="utf-8") as handle:
        raw = json.load(handle)
    assert raw["bands"] == [1, 2, 3, 4] and len(raw["band_statistics"]["mean"]) == 4
    with rasterio.open(sorted(glob.glob(f"{data}/train/Sat/*_sat.tif"))[0]) as tile:
        assert tile.count == 4 and [c.name for c in tile.colorinterp] == ["gray", "undefined", "undefined", "undefined"]


SLOW = pytest.mark.slow


def _frozen_files(folder, backbone: str, mode: int) -> list[str]:
    """The --glo_path / --c_path / --c2_path options of ``mode``: 4-band files of the stages they come from
    (random weights), as the stage scripts would have trained them."""
    from models.bands import InputBands
    from models.checkpoint import save_weights
    from models.modes import mode_spec
    from models.setup import create_model

    folder.mkdir(exist_ok=True)
    options = []
    for encoder in mode_spec(mode).frozen:
        path = folder / f"{encoder.setting}.pth"
        model = create_model(encoder.source_mode, backbone, n_class=3, bands=InputBands.of(4), training=True)
        save_weights(model, str(path))
        options += [f"--{encoder.setting}", str(path)]
    return options


@pytest.mark.parametrize(("backbone", "mode"), [
    ("fpn_resnet18", 4),
    *[pytest.param("fpn_resnet18", m, marks=SLOW) for m in (0, 1, 2, 3, 5)],
    # FCN8 through the command line in mode 1: its weights and training states are hundreds of MB each
    # and every further mode takes minutes and gigabytes of disk on a CPU; every FCN8 mode reads four
    # bands in tests/models/test_bands.py.
    pytest.param("fcn8_vgg16", 1, marks=SLOW),
])
def test_four_band_networks_train_evaluate_and_predict(four_bands, tmp_path, backbone, mode):
    source, data = four_bands
    models, logs = str(tmp_path / "models"), str(tmp_path / "logs")
    frozen = _frozen_files(tmp_path / "frozen", backbone, mode)
    common = [*tiny_args(data, models, logs, "--mode", str(mode), "--task_name", "m"), "--backbone", backbone, *frozen]
    assert run_cli(*common, "--train", "--epochs", "1") == 0
    state = torch.load(f"{models}/m.epoch.pth", weights_only=False, mmap=True)
    assert state["_fctl"]["bands"]["count"] == 4
    assert run_cli(*common, "--evaluate", "--pre_path", "m.epoch.pth") == 0
    # Predicting without the prepared folder: the bands come from the checkpoint (the scene's first four).
    out = tmp_path / "pred"
    (tmp_path / "none").mkdir()  # a data path that is no prepared folder
    elsewhere = tiny_args(str(tmp_path / "none"), models, logs, "--mode", str(mode), "--task_name", "m",
                          "--dataset", "custom", "--classes", source["classes"], *frozen)
    assert run_cli(*elsewhere, "--backbone", backbone, "--input", source["scenes"][2], "--pre_path", "m.epoch.pth",
                   "--prediction_path", str(out), "--no_tta") == 0
    with rasterio.open(out / "scene_2_mask.tif") as mask:
        assert mask.height == 160 and int(mask.read(1).max()) <= 2
