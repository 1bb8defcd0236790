"""Reading ahead, measured: one scene predicted from the local file and over HTTP, with and without it.

Writes a deflate-compressed tiled GeoTIFF of ``--size`` px (synthetic imagery with noise, so that its
tiles cost what real ones cost to fetch and decode), then predicts it with the stand-in network
(``tools/stand_in.py``: cheap, so that reading dominates), each run in a fresh process exactly as
``train_deep_globe.py --input`` does, in this order:

- ``local, no read-ahead``: the file, blocks read only when a patch asks for them (before read-ahead);
- ``local``: the file, with the read-ahead threads (``engine.scenes.READERS``);
- ``http``: the same file through a local HTTP server (``tools/range_server.py``) that adds
  ``--delay`` seconds (default 0.05) to every request, with the read-ahead threads;
- with ``--remote_without``, also ``http, no read-ahead``.

It prints seconds, peak memory above the start of the scene, the number of HTTP requests and the
bytes they fetched, a checksum of each mask (all must be equal), and the ratio of the remote run to
the local one.

    python -m tools.benchmark_read_ahead --size 16384 --work /tmp/read_ahead
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(opts: argparse.Namespace) -> dict:
    """Predict ``opts.scene`` (a path or URL) into a temporary folder; the figures as a dict."""
    import tempfile

    import numpy as np
    import rasterio
    import torch

    import engine.scenes
    from engine.scenes import SceneOutputs, SceneReading, predict_scenes
    from pipeline.config import PipelineConfig
    from pipeline.predictor import Predictor
    from tools.stand_in import StandIn
    from utils.distributed import DistInfo
    from utils.logging import process_memory_mb
    from utils.memory import fix_mmap_threshold

    fix_mmap_threshold()
    torch.set_num_threads(opts.threads)
    engine.scenes.READERS = engine.scenes.REMOTE_READERS = opts.readers
    model = StandIn(opts.mode, channels=1).eval().to(memory_format=torch.channels_last)
    predictor = Predictor(model, PipelineConfig(opts.size_p, opts.size_p, 3, opts.sub_batch_size))
    before = process_memory_mb("VmRSS")
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        predict_scenes(predictor, [opts.scene], SceneOutputs(out), SceneReading(), torch.device("cpu"), DistInfo(),
                       tta=False)
        seconds = time.perf_counter() - started
        peak = process_memory_mb("VmHWM")
        with rasterio.open(glob.glob(os.path.join(out, "*_mask.tif"))[0]) as mask:
            digest = hashlib.sha256(np.ascontiguousarray(mask.read(1)).tobytes()).hexdigest()
    return {"seconds": seconds, "pipeline_mb": peak - before, "mask_sha256": digest}


def _fetched_bytes(requests: list, size: int) -> int:
    """Bytes the server sent for the logged (method, path, Range header) requests of a file of ``size`` bytes."""
    total = 0
    for method, _, wanted in requests:
        if method != "GET":
            continue
        if not wanted:
            total += size
            continue
        start, _, end = wanted.split("=", 1)[1].partition("-")
        total += min(size - 1, int(end) if end else size - 1) - int(start) + 1
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--work", required=True, help="folder for the scene (kept for reruns)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds the HTTP server adds to every request")
    parser.add_argument("--mode", type=int, default=4)
    parser.add_argument("--size_p", type=int, default=508)
    parser.add_argument("--sub_batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readers", type=int, default=None,
                        help="read-ahead threads of the runs with read-ahead (default: engine.scenes' READERS for the "
                             "file, REMOTE_READERS over HTTP)")
    parser.add_argument("--remote_without", action="store_true", help="also the HTTP run without read-ahead")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scene", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        print(json.dumps(_worker(opts)))
        return 0

    from dataset.synthetic import write_synthetic_raster
    from tools.range_server import serve

    os.makedirs(opts.work, exist_ok=True)
    path = os.path.join(opts.work, f"scene_{opts.size}.tif")
    if not os.path.exists(path):
        started = time.perf_counter()
        write_synthetic_raster(path + ".part", opts.size, opts.size, tile=512, noise=24)
        os.replace(path + ".part", path)
        print(f"wrote {path}: {os.path.getsize(path) / 2**20:.0f} MB in {time.perf_counter() - started:.0f}s",
              flush=True)
    from engine.scenes import READERS, REMOTE_READERS

    runs = [("local, no read-ahead", False, 0), ("local", False, opts.readers or READERS),
            ("http", True, opts.readers or REMOTE_READERS)]
    if opts.remote_without:
        runs.append(("http, no read-ahead", True, 0))
    print(f"{opts.size} px, stand-in mode {opts.mode}, p {opts.size_p}, {opts.threads} torch threads, HTTP delay "
          f"{1000 * opts.delay:.0f} ms per request; one process per run", flush=True)
    print(f"{'run':<22}{'seconds':>9}{'pipeline MB':>13}{'requests':>10}{'MB fetched':>12}  mask sha256", flush=True)
    results = []
    env = dict(os.environ, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", OMP_NUM_THREADS=str(opts.threads))
    with serve(opts.work, delay=opts.delay) as (url, requests):
        for name, remote, readers in runs:
            scene = f"{url}/{os.path.basename(path)}" if remote else path
            first = len(requests)
            cmd = [sys.executable, "-m", "tools.benchmark_read_ahead", "--worker", "--scene", scene, "--work",
                   opts.work, "--mode", str(opts.mode), "--size_p", str(opts.size_p), "--sub_batch_size",
                   str(opts.sub_batch_size), "--threads", str(opts.threads), "--readers", str(readers)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
            row = {"run": name, "readers": readers, "requests": len(requests) - first,
                   "fetched_mb": _fetched_bytes(requests[first:], os.path.getsize(path)) / 2**20,
                   **json.loads(out.stdout.strip().splitlines()[-1])}
            results.append(row)
            print(f"{name:<22}{row['seconds']:>9.1f}{row['pipeline_mb']:>13.0f}{row['requests']:>10}"
                  f"{row['fetched_mb']:>12.0f}  {row['mask_sha256'][:16]}", flush=True)
    local = next(r for r in results if r["run"] == "local")
    remote = next(r for r in results if r["run"] == "http")
    before = next(r for r in results if r["run"] == "local, no read-ahead")
    same = len({r["mask_sha256"] for r in results}) == 1
    print(f"remote / local: {remote['seconds'] / local['seconds']:.2f}x; local with / without read-ahead: "
          f"{local['seconds'] / before['seconds']:.2f}x; masks {'identical' if same else 'DIFFER'}")
    if opts.json:
        with open(opts.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
