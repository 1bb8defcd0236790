"""The read-ahead benchmark: its byte count, and a small run end to end."""

import json

import pytest

from tools.benchmark_read_ahead import _fetched_bytes, main


def test_fetched_bytes_follow_the_range_headers():
    log = [("HEAD", "/s.tif", None), ("GET", "/s.tif", "bytes=0-99"), ("GET", "/s.tif", "bytes=900-"),
           ("GET", "/s.tif", "bytes=990-2000"), ("GET", "/s.tif", None)]
    assert _fetched_bytes(log, 1000) == 100 + 100 + 10 + 1000


@pytest.mark.slow  # three prediction processes
def test_a_small_run_reads_the_same_mask_locally_and_over_http(tmp_path):
    assert main(["--size", "1024", "--work", str(tmp_path), "--delay", "0", "--size_p", "256", "--threads", "1",
                 "--json", str(tmp_path / "runs.json")]) == 0
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert [r["run"] for r in runs] == ["local, no read-ahead", "local", "http"]
    assert len({r["mask_sha256"] for r in runs}) == 1
    http = runs[-1]
    assert http["requests"] > 0 and 0 < http["fetched_mb"] < 3 * (tmp_path / "scene_1024.tif").stat().st_size / 2**20
