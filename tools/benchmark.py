"""Speed and memory of the inference pipeline, measured the way a user runs it.

Each configuration runs in a fresh process so that its peak memory (RSS on CPU, max allocated on CUDA)
is its own. For every configuration the script reports seconds per image, patches per second, the same
number of bare network forwards (the floor the pipeline can reach), the pipeline's overhead over that
floor, GFLOPs per patch (counted with torch.utils.flop_counter), peak memory, and the machine's own
ceiling measured in the same run (convolutions at the network's shapes, both memory formats; bf16 and
fp16 too on CUDA, ``tools/perf.py``) with the forwards' GFLOP/s as a fraction of it.

    python -m tools.benchmark --profile          # also where one mode-4 sub-batch's time goes, by stage
    python -m tools.benchmark --train_modes 1 2 4 --image 320 --size_p 160   # training steps per second

    python -m tools.benchmark                                   # the issue-3 setting, see --help
    python -m tools.benchmark --backbone fpn_resnet18 --mode 4 --image 2448 --size_p 508 --size_g 508
    python -m tools.benchmark --streaming --sizes 2048 4096 8192 16384 --backbone stand_in --mode 1 \
        --size_p 508 --size_g 508 --no-tta --channels_last --threads 1

Checkpoints: by default random weights are written in the released layout (``--released_layout``,
1 GB files with the unused VGG classifier, loaded memory-mapped), so the memory figure includes
loading them the way real released files are loaded.

Scenes (``--scenes``): for each of ``--sizes`` a tiled GeoTIFF of that side is written on the fly and
predicted in a fresh process exactly as ``train_deep_globe.py --input`` does (read window by window,
GeoTIFF mask written band by band); ``--in_memory`` adds, for comparison, a run that reads the scene
whole first. The figure is peak RSS minus the RSS before the scene (model loaded); ``--readers 0``
reads without read-ahead threads, for memory comparisons that repeat, and ``--repeat N`` runs each
configuration N times, taking turns, and adds their medians (and the range of the memory figure):

    python -m tools.benchmark --scenes --sizes 4096 16384 32768 --backbone stand_in --mode 4 --no-tta \
        --size_p 508 --size_g 508 --threads 2 --channels_last

Streaming (``--streaming``): for each of ``--sizes`` a fresh process makes a square uint8 image
(coloured blocks), runs ``Predictor.mask_bands`` and writes the PNG band by band with
``PngBandWriter``, the path ``train_deep_globe.py`` takes in test mode, and reports its peak memory
next to the image's own size: peak RSS minus (RSS before the image + the image) is what the pipeline
itself needs, which must not grow like the image does. ``--backbone stand_in`` is the cheap stand-in
network of the tests (tools/stand_in.py) so that 16384 px runs in seconds on a CPU; any real backbone
works too. On CUDA the GPU's peak allocation is reported as well.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from models.modes import mode_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(opts: argparse.Namespace):
    """(device, model, predictor) of one configuration, set up the way train_deep_globe.py does it."""
    import torch

    from models.setup import create_model
    from pipeline.config import AMP_DTYPES, PipelineConfig
    from pipeline.predictor import Predictor
    from utils.memory import fix_mmap_threshold

    if opts.glibc_heap:
        fix_mmap_threshold()  # as train_deep_globe.py does

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    paths = json.loads(opts.paths) if opts.paths else {}
    if opts.backbone == "stand_in":
        from tools.stand_in import StandIn

        model = StandIn(opts.mode, channels=opts.stand_in_channels)
    else:
        model = create_model(opts.mode, opts.backbone, pre_path=paths.get("pre"), c_path=paths.get("c"),
                             glo_path=paths.get("glo"), training=False, pretrained=False)
    model = model.to(device).eval()
    if opts.channels_last is None and opts.backbone != "stand_in":
        from models.backbones import memory_format_for

        channels_last = memory_format_for(opts.backbone, device.type, training=False) == torch.channels_last
    else:
        channels_last = bool(opts.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = PipelineConfig(opts.size_p, opts.size_g, opts.context, opts.sub_batch_size, opts.amp, AMP_DTYPES[opts.amp_dtype])
    return device, model, Predictor(model, cfg, _refinement(opts, paths, device) if opts.refine else None)


def _refinement(opts: argparse.Namespace, paths: dict, device):
    """A refinement of the default size (random weights) reading the global model of ``paths`` (or a random one)."""
    import torch

    from models.refinement import RefinementNet, RefinementRecord
    from models.setup import create_model
    from pipeline.refine import Refinement

    if opts.backbone == "stand_in":
        from tools.stand_in import StandIn

        context = StandIn(0, channels=opts.stand_in_channels)
    else:
        context = create_model(0, opts.backbone, pre_path=paths.get("glo"), training=False, pretrained=False)
    net = RefinementNet(RefinementRecord(opts.mode, opts.backbone, 7, "centred", None, "global"))
    torch.nn.init.normal_(net.head.weight, std=0.01)  # a trained head is not zero
    # As train_deep_globe.py runs it for inference: channels_last.
    return Refinement(net.to(device, memory_format=torch.channels_last).eval(), context.to(device).eval())


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MB (see utils.logging.process_memory_mb)."""
    from utils.logging import process_memory_mb

    return process_memory_mb(field)


def _block_image(size: int, device, blocks: int = 64):
    """A square uint8 (3, size, size) image of blocks x blocks flat colours, filled in place (no float
    or second full-size copy is ever made)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    colours = torch.randint(0, 256, (3, blocks, blocks), dtype=torch.uint8, generator=gen)
    side = -(-size // blocks)
    image = torch.empty((3, size, size), dtype=torch.uint8, device=device)
    line = colours.repeat_interleave(side, dim=2)[:, :, :size].to(device)  # (3, blocks, size)
    for i in range(blocks):
        image[:, i * side:(i + 1) * side] = line[:, i:i + 1]
    return image


def _stream_worker(opts: argparse.Namespace) -> dict:
    """Stream one image of ``opts.image`` px to a PNG and return its memory figures."""
    import torch

    from dataset.io import PngBandWriter
    from utils.logging import peak_memory_mb

    device, model, predictor = _setup(opts)
    before = _status_mb("VmRSS")
    image = _block_image(opts.image, device)
    image_mb = image.numel() / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with PngBandWriter(os.path.join(tmp, "mask.png"), opts.image, opts.image) as writer:
            for _, band in predictor.mask_bands(image, tta=opts.tta):
                writer.write(band.cpu().numpy())
        png_mb = os.path.getsize(os.path.join(tmp, "mask.png")) / 2**20
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    return {
        "image": opts.image, "backbone": opts.backbone, "mode": opts.mode, "tta": opts.tta, "device": str(device),
        "patches": predictor.patches_per_image(opts.image, opts.image, opts.tta), "seconds": seconds,
        "image_mb": image_mb, "rss_before_image_mb": before, "peak_rss_mb": peak,
        "pipeline_mb": peak - before - (image_mb if device.type == "cpu" else 0.0),
        "gpu_peak_mb": peak_memory_mb(device) if device.type == "cuda" else None, "png_mb": png_mb,
    }


def _scene_worker(opts: argparse.Namespace) -> dict:
    """Predict the GeoTIFF ``opts.scene`` into a GeoTIFF mask the way ``--input`` does and return its figures.

    With ``--in_memory`` the scene is first read whole into a tensor (the path a JPEG takes), for the
    comparison; otherwise it is read window by window."""
    import rasterio  # noqa: F401  (GDAL's libraries belong to the baseline, as torch's do)
    import torch

    from dataset.scenes import RasterScene
    from engine.scenes import SceneOutputs, SceneReading, predict_scenes
    from pipeline.sources import TensorSource
    from utils.distributed import DistInfo

    device, model, predictor = _setup(opts)
    loaded = _status_mb("VmRSS")
    _load_vector_libraries()
    before = _status_mb("VmRSS")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if opts.in_memory:
            from dataset.classes import PALETTE
            from dataset.geotiff import GeoTiffBandWriter

            with RasterScene(opts.scene) as scene:
                image = torch.from_numpy(scene.read(0, 0, scene.height, scene.width)).to(device)
                profile = scene.profile()
            with GeoTiffBandWriter(os.path.join(tmp, "mask.tif"), profile, palette=PALETTE) as writer:
                for _, band in predictor.mask_bands(TensorSource(image), tta=opts.tta):
                    writer.write(band.cpu().numpy())
        else:
            predict_scenes(predictor, [opts.scene], SceneOutputs(tmp, vectorize=opts.vectorize,
                                                                 confidence=opts.confidence),
                           SceneReading(readers=opts.readers), device, DistInfo(), tta=opts.tta)
        seconds = time.perf_counter() - started
        peak = _status_mb("VmHWM")
        polygons = _polygon_figures(glob.glob(os.path.join(tmp, "*_mask." + opts.vectorize))[0]) \
            if opts.vectorize else {}
    with RasterScene(opts.scene) as scene:
        side = scene.width
    return {"scene": side, "in_memory": opts.in_memory, "backbone": opts.backbone, "mode": opts.mode, "tta": opts.tta,
            "patches": predictor.patches_per_image(side, side, opts.tta), "seconds": seconds,
            "rss_before_mb": before, "peak_rss_mb": peak, "pipeline_mb": peak - before,
            "vector_libraries_mb": before - loaded, "scene_mb": 3 * side * side / 2**20, "vectorize": opts.vectorize, **polygons}


def _load_vector_libraries() -> None:
    """Load what ``--vectorize`` runs on (pyogrio's own GDAL with its GeoPackage driver, shapely's GEOS,
    scipy's labelling, rasterio's polygonize) by vectorizing a small class map into a throwaway file,
    so that every run's baseline holds these libraries, as it holds torch and rasterio: the figure is
    then what a scene costs, and the libraries' own cost is reported apart (``vector_libraries_mb``).
    The map takes every step a scene takes (several bands, a region joined across them, holes, pixels
    without data, appends to the file), so that the libraries' code that a scene runs is loaded too."""
    import numpy as np
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from dataset.vectors import VectorBandWriter

    side, rows = 64, 16
    classes = np.zeros((side, side), dtype=np.uint8)
    classes[8:56, 8:56] = 1  # a ring of class 1 around a block of class 2: a polygon with a hole
    classes[16:48, 16:48] = 2
    classes[:8, 32:] = np.indices((8, 32)).sum(axis=0) % 2  # regions that touch only at corners
    valid = np.ones_like(classes, dtype=bool)
    valid[56:, 56:] = False
    profile = {"height": side, "width": side, "crs": CRS.from_epsg(3857), "transform": Affine(1, 0, 0, 0, -1, side)}
    with tempfile.TemporaryDirectory() as tmp:
        with VectorBandWriter(os.path.join(tmp, "warm_mask.gpkg"), profile, ["a", "b", "c"], "gpkg") as writer:
            for y0 in range(0, side, rows):
                writer.write(y0, classes[y0:y0 + rows], np.full((rows, side), 200, dtype=np.uint8),
                             valid[y0:y0 + rows])


def _polygon_figures(path: str) -> dict:
    """Features in a vector file, their geometries' WKB bytes and the file's size (read in chunks)."""
    import pyogrio

    count = wkb = 0
    chunk = 100000
    while True:
        _, _, geometries, _ = pyogrio.raw.read(path, skip_features=count, max_features=chunk, read_geometry=True)
        wkb += sum(len(g) for g in geometries)
        count += len(geometries)
        if len(geometries) < chunk:
            break
    return {"polygons": count, "polygon_mb": wkb / 2**20, "vector_file_mb": os.path.getsize(path) / 2**20}


def _worker(opts: argparse.Namespace) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.inputs import InputBuilder
    from pipeline.predictor import Predictor
    from utils.logging import peak_memory_mb

    device, model, refined = _setup(opts)
    predictor = Predictor(model, refined.cfg)  # without the refinement (--refine: timed against it)
    amp_dtype = predictor.cfg.amp_dtype
    image = torch.randint(0, 256, (3, opts.image, opts.image), dtype=torch.uint8, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(run) -> float:
        sync()
        started = time.perf_counter()
        run.predict(image, tta=opts.tta)
        sync()
        return time.perf_counter() - started

    runs = [predictor, refined] if opts.refine else [predictor]
    for run in runs:
        run.predict(image, tta=opts.tta)  # warm-up (cudnn autotune, allocator)
    times = [[timed(run) for run in runs] for _ in range(opts.repeat)]  # interleaved: same load for both
    per_image = sum(t[0] for t in times) / opts.repeat
    extra = {}
    if opts.refine:
        extra["refined_seconds_per_image"] = sum(t[1] for t in times) / opts.repeat
        extra["refine_runs"] = times
    # Before the floor and FLOP measurements below add their own.
    pipeline_peak = peak_memory_mb(device)
    patches = predictor.patches_per_image(opts.image, opts.image, opts.tta)

    # The floor: the same number of forwards on ready-made inputs, no grid, crops, contexts or merge.
    p, sb = opts.size_p, opts.sub_batch_size
    x = torch.rand(sb, 3, p, p, device=device)
    if predictor.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # the inputs of one sub-batch, built once and reused by every call
        image = torch.randint(0, 256, (3, p, p), dtype=torch.uint8, device=device)
        inputs = InputBuilder(model, image, predictor.cfg, memory_format=predictor.memory_format)([(0, 0, 0)] * sb)
    calls = max(1, -(-patches // sb))
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=opts.amp):
        model(x, inputs)
        sync()
        started = time.perf_counter()
        for _ in range(opts.repeat):
            for _ in range(calls):
                model(x, inputs)
        sync()
        bare = (time.perf_counter() - started) / opts.repeat
        counter = FlopCounterMode(display=False)
        with counter:
            model(x[:1], inputs.map(lambda t: t[:1]))
    if opts.backbone != "stand_in":
        from tools.perf import conv_ceiling, profile_stages, training_steps

        extra["ceiling"] = conv_ceiling(opts.backbone, p, sb, device)
        if opts.profile:
            extra["profile"] = profile_stages(predictor, image, repeat=opts.repeat)
        if opts.train_modes:
            del model, predictor, x, inputs
            extra["training"] = [training_steps(mode, opts.backbone, opts.image, p, sb, device,
                                                channels_last=opts.channels_last) for mode in opts.train_modes]
    return extra | {
        "backbone": opts.backbone, "mode": opts.mode, "image": opts.image, "size_p": p, "size_g": opts.size_g,
        "tta": opts.tta, "amp": opts.amp, "device": str(device), "patches": patches,
        "seconds_per_image": per_image, "patches_per_second": patches / per_image if patches else 0.0,
        "bare_seconds": bare * patches / (calls * sb) if patches else bare,
        "gflops_per_patch": counter.get_total_flops() / 1e9,
        "peak_memory_mb": pipeline_peak,
    }


def _released_files(folder: str, spec, n_class: int = 7) -> dict:
    """Released-layout files for the model of ``spec`` and its frozen encoders: {"pre"|"c"|"glo": path}."""
    from tools.released_layout import make_released_checkpoint

    paths = {}
    for example, key in ((spec.example, "pre"), *((e.example, e.setting.split("_")[0]) for e in spec.frozen)):
        path = os.path.join(folder, example)
        make_released_checkpoint(example.split(".")[0], path, seed=0, n_class=n_class)
        paths[key] = path
    return paths


def _strip(argv: list[str], option: str, values: int) -> list[str]:
    """argv without ``option`` and the ``values`` words after it."""
    if option not in argv:
        return argv
    i = argv.index(option)
    return argv[:i] + argv[i + 1 + values:]


def _streaming(opts: argparse.Namespace) -> None:
    """One process per size; prints the memory table (and writes --json)."""
    argv = _strip(_strip(sys.argv[1:], "--json", 1), "--streaming", 0)
    if "--sizes" in argv:  # --sizes takes every number after it
        i = argv.index("--sizes")
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        argv = argv[:i] + argv[j:]
    results = []
    print(f"streaming {opts.backbone} mode {opts.mode} patch {opts.size_p} TTA {'on' if opts.tta else 'off'} "
          f"sub-batch {opts.sub_batch_size}: peak memory against image size, one process per size", flush=True)
    header = (f"{'size':>7} {'patches':>8} {'seconds':>8} {'image MB':>9} {'RSS before':>11} {'peak RSS':>9} "
              f"{'peak-before-image':>18}")
    print(header + ("" if not opts.device or opts.device == "cpu" else f" {'GPU peak MB':>12}"), flush=True)
    for size in opts.sizes:
        cmd = [sys.executable, "-m", "tools.benchmark", "--stream_worker", *argv, "--image", str(size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        line = (f"{size:>7} {r['patches']:>8} {r['seconds']:>8.1f} {r['image_mb']:>9.0f} "
                f"{r['rss_before_image_mb']:>11.0f} {r['peak_rss_mb']:>9.0f} {r['pipeline_mb']:>18.0f}")
        if r["gpu_peak_mb"] is not None:
            line += f" {r['gpu_peak_mb']:>12.0f}"
        print(line, flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)


def _scenes(opts: argparse.Namespace) -> None:
    """For each of --sizes: write a tiled GeoTIFF, then predict it in a fresh process (and, with
    --in_memory, once more the in-memory way); prints the memory table (and writes --json)."""
    from dataset.synthetic import write_synthetic_raster

    argv = _strip(_strip(_strip(_strip(sys.argv[1:], "--json", 1), "--scenes", 0), "--in_memory", 0), "--vectorize", 1)
    if "--sizes" in argv:
        i = argv.index("--sizes")
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        argv = argv[:i] + argv[j:]
    print(f"scenes: {opts.backbone} mode {opts.mode} patch {opts.size_p} TTA {'on' if opts.tta else 'off'} sub-batch "
          f"{opts.sub_batch_size}; tiled deflate GeoTIFFs, one process per run; pipeline = peak RSS - RSS before "
          f"the scene", flush=True)
    print(f"{'side':>7} {'scene MB':>9} {'path':>10} {'patches':>8} {'seconds':>8} {'RSS before':>11} "
          f"{'pipeline MB':>12}" + (f" {'polygons':>9} {'WKB MB':>7}" if opts.vectorize else ""), flush=True)
    results = []
    for size in opts.sizes:
        with tempfile.TemporaryDirectory(dir=opts.scene_dir) as tmp:
            path = os.path.join(tmp, f"scene_{size}.tif")
            started = time.perf_counter()
            write_synthetic_raster(path, size, size, tile=512)
            made = time.perf_counter() - started
            print(f"  (wrote {path}: {os.path.getsize(path) / 2**20:.0f} MB on disk in {made:.0f}s)", flush=True)
            # With --vectorize: also the run with the confidence alone, which the polygons' mean confidence needs.
            runs = [(True, None, False)] if opts.in_memory else []
            runs = [(False, None, False)] + runs + ([(False, None, True), (False, opts.vectorize, False)]
                                                    if opts.vectorize else [])
            # Repeats take turns (mask, confidence, polygons, mask, ...) so that a slow spell of a shared machine
            # falls on every configuration alike.
            rows = []
            for _ in range(opts.repeat):
                for in_memory, vectorize, confidence in runs:
                    cmd = [sys.executable, "-m", "tools.benchmark", "--scene_worker", *argv, "--scene", path]
                    cmd += (["--in_memory"] if in_memory else []) + (["--vectorize", vectorize] if vectorize else [])
                    cmd += ["--confidence"] if confidence else []
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    r["run"] = "in memory" if in_memory else f"+{vectorize}" if vectorize else \
                        "+confidence" if confidence else "windowed"
                    rows.append(r)
                    _print_scene_row(r)
            if opts.repeat > 1:
                for label in dict.fromkeys(r["run"] for r in rows):
                    _print_scene_row(_median_row([r for r in rows if r["run"] == label]))
            results += rows
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)


def _print_scene_row(r: dict) -> None:
    """One row of the scenes table: a run's figures, or with ``spread`` the median of several and their range."""
    extra = f" {r['polygons']:>9} {r['polygon_mb']:>7.1f}" if r["vectorize"] else ""
    spread = f"  median of {r['runs']}, pipeline MB {r['spread'][0]:.0f}..{r['spread'][1]:.0f}" if "spread" in r else ""
    print(f"{r['scene']:>7} {r['scene_mb']:>9.0f} {r['run']:>10} {r['patches']:>8} {r['seconds']:>8.1f} "
          f"{r['rss_before_mb']:>11.0f} {r['pipeline_mb']:>12.0f}{extra}{spread}", flush=True)


def _median_row(runs: list[dict]) -> dict:
    """The median seconds, RSS before and pipeline MB of repeated runs of one configuration, and the range of
    the pipeline MB (``spread``)."""
    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    mb = [r["pipeline_mb"] for r in runs]
    return {**runs[0], "seconds": median("seconds"), "rss_before_mb": median("rss_before_mb"),
            "pipeline_mb": median("pipeline_mb"), "runs": len(runs), "spread": (min(mb), max(mb))}


def _print_extra(result: dict) -> None:
    """The ceiling, the forwards as a fraction of it, the stage profile, the refinement and the training rows."""
    if "refined_seconds_per_image" in result:
        plain, refined = result["seconds_per_image"], result["refined_seconds_per_image"]
        pairs = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in result["refine_runs"])
        print(f"  with the refinement    {refined:.2f} s/image against {plain:.2f} without: +{100 * (refined / plain - 1):.1f}% "
              f"(runs, without/with: {pairs})")
    if "ceiling" in result:
        best = max(row["gflops_per_s"] for row in result["ceiling"] if row["dtype"] == "float32")
        bare_rate = result["gflops_per_patch"] * result["patches"] / result["bare_seconds"] if result["patches"] else 0
        print("  convolution ceiling (GFLOP/s):")
        for row in result["ceiling"]:
            print(f"    {row['conv']:<28}{row['format']:<15}{row['dtype']:<10}{row['gflops_per_s']:8.1f}")
        print(f"  bare forwards          {bare_rate:.1f} GFLOP/s = {100 * bare_rate / best:.0f}% of the best float32 "
              f"ceiling ({best:.1f})")
    if "profile" in result:
        total = result["profile"][-1][1]
        print("  stages of one sub-batch (seconds, share of the whole forward):")
        for name, seconds in result["profile"]:
            print(f"    {name:<36}{seconds:8.3f}  {100 * seconds / total:5.1f}%")
    for row in result.get("training", []):
        print(f"  training mode {row['mode']}: {row['steps_per_second']:.3f} steps/s ({row['seconds_per_step']:.2f} s "
              f"per step of one {row['image']}px image, {row['sub_batches_per_step']} sub-batches, "
              f"{'channels_last' if row['channels_last'] else 'contiguous'})")


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the FCtL inference pipeline.")
    parser.add_argument("--backbone", default="fcn8_vgg16",
                        help="fcn8_vgg16, fpn_*, or stand_in (the tests' tiny network)")
    parser.add_argument("--mode", type=int, default=4)
    parser.add_argument("--image", type=int, default=256, help="side of the (square, random) test image")
    parser.add_argument("--size_p", type=int, default=160)
    parser.add_argument("--size_g", type=int, default=160)
    parser.add_argument("--context", type=int, default=3)
    parser.add_argument("--sub_batch_size", type=int, default=8)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--amp_dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed repeats of each image (with --scenes: runs of each configuration, taking turns, "
                             "with their median)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last weights and inputs, for inference and --train_modes (default: as "
                             "train_deep_globe.py, memory_format_for)")
    parser.add_argument("--stand_in_channels", type=int, default=1, help="hidden channels of --backbone stand_in")
    parser.add_argument("--streaming", action="store_true",
                        help="peak memory against image size for the band-streaming path (see --sizes)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384],
                        help="image sides for --streaming or --scenes, each in its own process")
    parser.add_argument("--scenes", action="store_true",
                        help="peak memory against scene size for GeoTIFF scenes read window by window (--input)")
    parser.add_argument("--in_memory", action="store_true",
                        help="with --scenes: also predict each scene read whole into memory, for comparison")
    parser.add_argument("--confidence", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vectorize", default=None, choices=["gpkg", "geojson", "fgb"],
                        help="with --scenes: also predict each scene with --vectorize in this format (own process)")
    parser.add_argument("--scene_dir", default=None,
                        help="with --scenes: the folder (made if missing) in which each size's GeoTIFF is written, "
                             "in a temporary folder of its own (default: the system's temporary folder)")
    parser.add_argument("--readers", type=int, default=None,
                        help="with --scenes: threads reading the scene ahead (default: the pipeline's; 0: none, so "
                             "that no thread's timing moves the peak memory and runs repeat it closely)")
    parser.add_argument("--glibc_heap", action=argparse.BooleanOptionalAction, default=True,
                        help="fix glibc's mmap threshold as train_deep_globe.py does (--no-glibc_heap: glibc's default)")
    parser.add_argument("--scene_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scene", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--released_layout", action=argparse.BooleanOptionalAction, default=True,
                        help="load 1 GB released-layout checkpoints (fcn8_vgg16, mode 4) instead of random init")
    parser.add_argument("--refine", action="store_true",
                        help="also time the same images with a refinement (models/refinement.py, random weights) "
                             "reading the global model, interleaved with the runs without; with --streaming/--scenes: "
                             "measure with the refinement on")
    parser.add_argument("--profile", action="store_true",
                        help="also time each stage of one mode-4 sub-batch (VGG/ResNet blocks, head, correlations, ...)")
    parser.add_argument("--train_modes", type=int, nargs="*", default=[],
                        help="also measure training steps per second of these modes (random images of --image px)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.readers is not None and opts.readers < 0:
        parser.error("--readers must be 0 or more")
    if opts.scene_dir is not None:
        try:
            os.makedirs(opts.scene_dir, exist_ok=True)
        except OSError as exc:
            parser.error(f"--scene_dir {opts.scene_dir} cannot be made ({exc.strerror}); give a folder that can be written")

    if opts.worker:
        print(json.dumps(_worker(opts)))
        return
    if opts.stream_worker:
        print(json.dumps(_stream_worker(opts)))
        return
    if opts.scene_worker:
        print(json.dumps(_scene_worker(opts)))
        return
    if opts.streaming:
        _streaming(opts)
        return
    if opts.scenes:
        _scenes(opts)
        return

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        spec = mode_spec(opts.mode)
        if opts.released_layout and opts.backbone == "fcn8_vgg16" and spec.example is not None:
            print(f"writing released-layout checkpoints ({1 + len(spec.frozen)} x ~1 GB) ...", flush=True)
            paths = _released_files(tmp, spec)
        argv = _strip(sys.argv[1:], "--json", 1)
        cmd = [sys.executable, "-m", "tools.benchmark", "--worker", "--paths", json.dumps(paths)] + argv
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
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
    _print_extra(result)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
