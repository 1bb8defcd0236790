"""python -m tools.fingerprint: two fingerprints of the same code are identical; a changed run is named."""

from __future__ import annotations

import pytest
import torch

from models.modes import MODES
from tools import fingerprint

RUNS = 2 * len(MODES)  # one view and TTA for every mode


@pytest.mark.slow  # two runs (one view, TTA) of every mode, twice
def test_same_code_same_fingerprint_and_a_change_is_named(tmp_path, one_thread, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert fingerprint.main(["--out", a, "--backbones", "fpn_resnet18"]) == 0
    assert fingerprint.main(["--out", b, "--backbones", "fpn_resnet18"]) == 0
    assert fingerprint.main(["--compare", a, b]) == 0
    assert f"{RUNS} of {RUNS} runs identical" in capsys.readouterr().out
    changed = tmp_path / "b" / "fpn_resnet18_mode4_tta.logits.pt"
    logits = torch.load(changed)
    logits[0, 0, 0] += 1e-3
    torch.save(logits, changed)
    assert fingerprint.main(["--compare", a, b]) == 1
    out = capsys.readouterr().out
    assert "fpn_resnet18_mode4_tta.logits.pt: DIFFERS" in out and f"{RUNS - 1} of {RUNS} runs identical" in out


def test_an_empty_folder_is_one_error_line(tmp_path, capsys):
    assert fingerprint.main(["--compare", str(tmp_path), str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: no fingerprint (*.logits.pt) in")
