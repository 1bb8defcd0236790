"""--evaluate's boundary and seam scores through the entry script: the JSON keys, the table and --boundary_px."""

from __future__ import annotations

import json

import pytest

from option import parse_options
from tests.cli.helpers import run_cli, tiny_args
from tests.cli.test_errors import expect_error


def evaluate_args(tiny_data, fpn_pre_folder, tmp_path, *extra: str) -> list[str]:
    return tiny_args(tiny_data, fpn_pre_folder, str(tmp_path / "logs"), "--mode", "1", "--pre_path", "pre.pth",
                     "--evaluate", "--metrics_path", str(tmp_path / "metrics.json"), *extra)


def test_evaluate_writes_boundary_iou_and_seam_accuracy(tiny_data, fpn_pre_folder, tmp_path, capsys):
    assert run_cli(*evaluate_args(tiny_data, fpn_pre_folder, tmp_path, "--boundary_px", "2")) == 0
    scores = json.loads((tmp_path / "metrics.json").read_text())
    assert len(scores["boundary_iou"]) == 7 and all(0 <= v <= 1 for v in scores["boundary_iou"])
    assert scores["mboundary_iou"] == pytest.approx(sum(scores["boundary_iou"][1:]) / 6)
    assert (scores["boundary_px"], scores["seam_px"]) == (2, 8)
    assert 0 <= scores["seam_accuracy"] <= 1 and 0 <= scores["off_seam_accuracy"] <= 1
    assert {"miou", "iou", "f1", "accuracy", "confusion_matrix"} <= scores.keys()
    err = capsys.readouterr().err
    assert "mBIoU" in err and "within 2 px of a class border" in err and "seam accuracy" in err


def test_boundary_px_defaults_to_3_and_below_1_is_refused(tiny_data, fpn_pre_folder, tmp_path, capsys):
    assert parse_options(["--pre_path", "x.pth", "--evaluate"]).run.boundary_px == 3
    expect_error(capsys, evaluate_args(tiny_data, fpn_pre_folder, tmp_path, "--boundary_px", "0"),
                 "--boundary_px must be at least 1 (got 0)")
    assert not (tmp_path / "metrics.json").exists()
