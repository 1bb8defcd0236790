"""Speed and memory of the inference pipeline, measured the way a user runs it.

Each configuration runs in a fresh process so that its peak memory (RSS on CPU, max allocated on CUDA)
is its own. For every configuration the script reports seconds per image, patches per second, the same
number of bare network forwards (the floor the pipeline can reach), the pipeline's overhead over that
floor, GFLOPs per patch (counted with torch.utils.flop_counter) and peak memory.

    python tools/benchmark.py                                   # the issue-3 setting, see --help
    python tools/benchmark.py --backbone fpn_resnet18 --mode 4 --image 2448 --size_p 508 --size_g 508
    python tools/benchmark.py --streaming --sizes 2048 4096 8192 16384 --backbone tiny

Checkpoints: by default random weights are written in the released layout (``--released_layout``,
1 GB files with the unused VGG classifier, loaded memory-mapped), so the memory figure includes
loading them the way real released files are loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _worker(opts: argparse.Namespace) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.setup import create_model
    from utils.inference import PipelineConfig, Predictor
    from utils.logging import peak_memory_mb

    torch.manual_seed(0)
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = json.loads(opts.paths) if opts.paths else {}
    model = create_model(opts.mode, opts.backbone, pre_path=paths.get("pre"), c_path=paths.get("c"),
                         glo_path=paths.get("glo"), training=False, pretrained=False).to(device).eval()
    amp_dtype = torch.bfloat16 if opts.amp_dtype == "bf16" else torch.float16
    cfg = PipelineConfig(opts.size_p, opts.size_g, opts.context, opts.sub_batch_size, opts.amp, amp_dtype)
    predictor = Predictor(model, cfg)
    image = torch.randint(0, 256, (3, opts.image, opts.image), dtype=torch.uint8, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    predictor.predict(image, tta=opts.tta)  # warm-up (cudnn autotune, allocator)
    sync()
    started = time.perf_counter()
    for _ in range(opts.repeat):
        predictor.predict(image, tta=opts.tta)
    sync()
    per_image = (time.perf_counter() - started) / opts.repeat
    pipeline_peak = peak_memory_mb(device)  # before the floor and FLOP measurements below add their own
    patches = predictor.patches_per_image(opts.image, opts.image, opts.tta)

    # The floor: the same number of forwards on ready-made inputs, no grid, crops, contexts or merge.
    p, sb = opts.size_p, opts.sub_batch_size
    x = torch.rand(sb, 3, p, p, device=device)
    medium = x.clone() if model.needs_medium else None
    g_top = None
    if model.needs_global:
        with torch.inference_mode():
            g_top = model.encode_global(torch.rand(1, 3, opts.size_g, opts.size_g, device=device))
    calls = max(1, -(-patches // sb))
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=opts.amp):
        model(x, medium=medium, global_top=g_top)
        sync()
        started = time.perf_counter()
        for _ in range(opts.repeat):
            for _ in range(calls):
                model(x, medium=medium, global_top=g_top)
        sync()
        bare = (time.perf_counter() - started) / opts.repeat
        counter = FlopCounterMode(display=False)
        with counter:
            model(x[:1], medium=None if medium is None else medium[:1], global_top=g_top)
    return {
        "backbone": opts.backbone, "mode": opts.mode, "image": opts.image, "size_p": p, "size_g": opts.size_g,
        "tta": opts.tta, "amp": opts.amp, "device": str(device), "patches": patches,
        "seconds_per_image": per_image, "patches_per_second": patches / per_image if patches else 0.0,
        "bare_seconds": bare * patches / (calls * sb) if patches else bare,
        "gflops_per_patch": counter.get_total_flops() / 1e9,
        "peak_memory_mb": pipeline_peak,
    }


def _released_files(folder: str, n_class: int = 7) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from released_layout import make_released_checkpoint

    paths = {}
    for kind, key in (("all", "pre"), ("medium", "c"), ("global", "glo")):
        path = os.path.join(folder, f"{kind}.epoch.pth")
        make_released_checkpoint(kind, path, seed=0, n_class=n_class)
        paths[key] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the FCtL inference pipeline.")
    parser.add_argument("--backbone", default="fcn8_vgg16")
    parser.add_argument("--mode", type=int, default=4)
    parser.add_argument("--image", type=int, default=256, help="side of the (square, random) test image")
    parser.add_argument("--size_p", type=int, default=160)
    parser.add_argument("--size_g", type=int, default=160)
    parser.add_argument("--context", type=int, default=3)
    parser.add_argument("--sub_batch_size", type=int, default=8)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--amp_dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--released_layout", action=argparse.BooleanOptionalAction, default=True,
                        help="load 1 GB released-layout checkpoints (fcn8_vgg16, mode 4) instead of random init")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.worker:
        print(json.dumps(_worker(opts)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        if opts.released_layout and opts.backbone == "fcn8_vgg16" and opts.mode == 4:
            print("writing released-layout checkpoints (3 x ~1 GB) ...", flush=True)
            paths = _released_files(tmp)
        argv = sys.argv[1:]
        if "--json" in argv:
            i = argv.index("--json")
            argv = argv[:i] + argv[i + 2:]
        cmd = [sys.executable, __file__, "--worker", "--paths", json.dumps(paths)] + argv
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    overhead = 100 * (result["seconds_per_image"] / result["bare_seconds"] - 1) if result["bare_seconds"] else 0.0
    print(f"{result['backbone']} mode {result['mode']} image {result['image']}px patch {result['size_p']} "
          f"global {result['size_g']} TTA {'on' if result['tta'] else 'off'} on {result['device']}")
    print(f"  patches per image      {result['patches']}")
    print(f"  seconds per image      {result['seconds_per_image']:.3f}")
    print(f"  patches per second     {result['patches_per_second']:.2f}")
    print(f"  bare forwards, seconds {result['bare_seconds']:.3f}  (pipeline overhead {overhead:+.1f}%)")
    print(f"  GFLOPs per patch       {result['gflops_per_patch']:.1f}")
    print(f"  peak memory            {result['peak_memory_mb']:.0f} MB")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
