"""Test mode and --evaluate through the entry script, with checkpoints in the released layout."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from dataset.classes import PALETTE
from tests.cli.helpers import list_files, run_cli


def _released_args(tiny_data, released, logs, *extra):
    return ["--data_path", tiny_data, "--model_path", str(released["all"].parent), "--log_path", logs,
            "--mode", "4", "--pre_path", released["all"].name, "--c_path", released["medium"].name,
            "--glo_path", released["global"].name, "--size_p", "96", "--size_g", "96", "--device", "cpu",
            "--num_workers", "0", "--sub_batch_size", "8", *extra]


def test_test_mode_writes_colour_masks_with_tta(tiny_data, released_checkpoints, tmp_path, capsys):
    out = tmp_path / "pred"
    code = run_cli(*_released_args(tiny_data, released_checkpoints, str(tmp_path / "logs"),
                                   "--prediction_path", str(out)))
    assert code == 0
    sat = os.path.join(tiny_data, "offical_crossvali", "Sat")
    ids = sorted(f.rsplit("_sat", 1)[0] for f in os.listdir(sat))
    assert list_files(str(out)) == [f"{i}_mask.png" for i in ids]
    palette = {tuple(c) for c in PALETTE.tolist()}
    for image_id in ids:
        mask = np.asarray(Image.open(out / f"{image_id}_mask.png"))
        image = Image.open(os.path.join(sat, f"{image_id}_sat.png"))
        assert mask.shape == (image.height, image.width, 3)
        assert {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0).tolist()} <= palette
    err = capsys.readouterr().err
    assert "predicted 2 images" in err and "TTA on" in err


def test_evaluate_writes_metrics_json_and_prints_the_table(tiny_data, released_checkpoints, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    code = run_cli(*_released_args(tiny_data, released_checkpoints, str(tmp_path / "logs"), "--evaluate",
                                   "--metrics_path", str(metrics)))
    assert code == 0
    scores = json.loads(metrics.read_text())
    assert len(scores["iou"]) == 7 and len(scores["confusion_matrix"]) == 7
    assert scores["tta"] is False and scores["split"] == "crossvali" and scores["images"] == 2
    total = sum(map(sum, scores["confusion_matrix"]))
    assert total == 2 * 96 * 96
    err = capsys.readouterr().err
    assert "mIoU" in err and "accuracy" in err


def test_a_medium_checkpoint_as_the_mode4_model_is_a_clear_error(tiny_data, released_checkpoints, tmp_path, capsys):
    args = _released_args(tiny_data, released_checkpoints, str(tmp_path / "logs"), "--evaluate")
    args[args.index("--pre_path") + 1] = released_checkpoints["medium"].name
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "medium" in err[-1] and "--pre_path" in err[-1]
