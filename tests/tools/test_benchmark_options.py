"""tools/benchmark.py: options it cannot use are one usage line, before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools.benchmark import ROOT


def _benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.benchmark", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--readers", "-1"], "--readers must be 0 or more"),
    (["--scene_dir", "{file}/scenes"], "--scene_dir {file}/scenes cannot be made"),
])
def test_unusable_options_are_a_usage_error(tmp_path, args, message):
    file = tmp_path / "a_file"
    file.write_text("")
    run = _benchmark("--scenes", *[a.format(file=file) for a in args])
    assert run.returncode == 2
    assert message.format(file=file) in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
