"""int8 x4plus, measured: NNCF post-training quantisation vs the default precision, side by side.

    pip install -e '.[int8]'    # nncf: an optional extra, only this benchmark needs it
    python benchmarks/bench_int8.py --photos DIR [--preset mixed|performance] [--float-ends]
        [--float-upsampler] [--ranges minmax|default] [--overflow-fix first|all]
        [--calibration 32] [--repeats 3] [--tile 256] [--max-edge 320]

1. The x4plus dynamic IR the project itself runs (pipeline.backends.upscaler_ir: converted once, in a
   separate process, into --state-dir's cache).
2. nncf.quantize on --calibration crops of 64, 96 and 128 px cut from skimage's packaged photos astronaut,
   coffee, rocket and motorcycle (none of them is scored below), fast bias correction on, activation
   ranges from the extremes seen (--ranges minmax; NNCF's default estimator clipped: 17 dB in a probe);
   --float-ends leaves the first and the last convolution in float, --float-upsampler the 4x upsampler's
   four; --overflow-fix all quantises every convolution's weights to 7 bits (no 16-bit saturation on CPUs
   without VNNI; NNCF's default does that to the first one only). The int8 IR is saved under --out (never
   committed).
3. Speed: the default-precision compiled model (OpenVINO's f32 on a CPU without bf16, bf16 with it) and
   the int8 one, compiled with the same precision hint and threads, on one TILE x TILE input tile,
   alternating call by call, one untimed call each first; medians of --repeats.
4. Quality: the photos in --photos (Real-ESRGAN's inputs/: gray, RGBA, 16-bit, JPEG) and skimage's
   chelsea and camera, centre-cropped to --max-edge, each restored untiled through the same Restorer
   flow by the int8 model and by the fp32 model (f32 precision); PSNR of int8 vs fp32.

The bar (issue 11): a preset only if int8 is >= 1.5x faster at >= 40 dB minimum over the photos. Prints
Markdown tables and writes JSON under --out, with the machine named and the load average recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_upscale import (  # noqa: E402  (after the path line, like the script it comes from)
    MODEL,
    emit,
    load_average,
    machine,
    packaged_photo,
    photos_in,
    write_png,
)

NNCF_MISSING = (
    "nncf is not installed: pip install -e '.[int8]' (the optional extra pins the version measured)"
)
CALIBRATION_PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle")
CALIBRATION_EDGES = (64, 96, 128)
SCORED_PACKAGED = ("chelsea", "camera")  # never used for calibration
MIN_SPEEDUP = 1.5
MIN_PSNR_DB = 40.0


# --- inputs -------------------------------------------------------------------------------------------


def skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def calibration_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """COUNT crops (1x3xHxW float32 in 0..1, RGB: what the tiler hands the network), round-robin over
    the calibration photos and edges, at seeded random positions."""
    rng = np.random.default_rng(seed)
    photos = [skimage_photo(name) for name in CALIBRATION_PHOTOS]
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        edge = CALIBRATION_EDGES[index % len(CALIBRATION_EDGES)]
        top = int(rng.integers(0, photo.shape[0] - edge + 1))
        left = int(rng.integers(0, photo.shape[1] - edge + 1))
        crop = photo[top : top + edge, left : left + edge].astype(np.float32) / 255.0
        crops.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None]))
    return crops


def centre_crop(pixels: np.ndarray, max_edge: int) -> np.ndarray:
    """At most max_edge on each axis, cut from the centre (never resized: the pixels stay real)."""
    height, width = pixels.shape[:2]
    top, left = max(0, (height - max_edge) // 2), max(0, (width - max_edge) // 2)
    return np.ascontiguousarray(pixels[top : top + max_edge, left : left + max_edge])


def scored_photos(folder: Path | None, work: Path) -> list[Path]:
    packaged = [write_png(work / f"{name}.png", skimage_photo(name)) for name in SCORED_PACKAGED]
    return [*photos_in(folder), *packaged]


# --- quantising ---------------------------------------------------------------------------------------


def float_convolutions(model: Any, ends: bool, upsampler: bool) -> list[str]:
    """Names of the convolutions to leave in float: the first and the last (ends), and every one after
    the first Interpolate (RRDBNet's 4x upsampler: 4 convolutions, ~8 % of the FLOPs, at up to 4x
    resolution)."""
    convolutions, upsampling = [], False  # (name, after the first Interpolate) in graph order
    for op in model.get_ordered_ops():
        upsampling = upsampling or op.get_type_name() == "Interpolate"
        if op.get_type_name() == "Convolution":
            convolutions.append((op.get_friendly_name(), upsampling))
    keep = {convolutions[0][0], convolutions[-1][0]} if ends else set()
    if upsampler:
        keep |= {name for name, upsampling in convolutions if upsampling}
    return [name for name, _ in convolutions if name in keep]


def quantize(xml: Path, args: argparse.Namespace, crops: list[np.ndarray]) -> tuple[Any, list[str]]:
    """ranges "minmax": activation ranges from the extremes over every crop (nothing clipped that the
    calibration saw); "default": NNCF's own estimator for the preset."""
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParameters, RangeEstimatorParametersSet
    except ImportError:
        raise SystemExit(NNCF_MISSING) from None
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    ignored = float_convolutions(model, args.float_ends, args.float_upsampler)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(crops),
        preset=nncf.QuantizationPreset.MIXED
        if args.preset == "mixed"
        else nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(crops),
        fast_bias_correction=True,
        ignored_scope=nncf.IgnoredScope(names=ignored),
        advanced_parameters=AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.ENABLE if args.overflow_fix == "all" else OverflowFix.FIRST_LAYER,
            activations_range_estimator_params=(
                RangeEstimatorParametersSet.MINMAX if args.ranges == "minmax" else RangeEstimatorParameters()
            ),
        ),
    )
    return quantized, ignored


def int8_convolutions(compiled: Any) -> tuple[int, int]:
    """(convolutions the CPU plugin runs in int8, all convolutions) in a compiled model."""
    total = low = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) != "Convolution":
            continue
        total += 1
        low += info["runtimePrecision"].astype(str) in ("i8", "u8")
    return low, total


def variant(args: argparse.Namespace) -> str:
    floats = ("-float-ends" if args.float_ends else "") + ("-float-upsampler" if args.float_upsampler else "")
    return f"{args.preset}-{args.ranges}{floats}{'-overflow-fix' if args.overflow_fix == 'all' else ''}"


# --- measuring ----------------------------------------------------------------------------------------


def time_alternating(upscalers: dict[str, Any], tile: np.ndarray, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each upscaler on the same tile, alternating call by call (so a load change
    on the machine hits both alike), after one untimed call each."""
    for upscaler in upscalers.values():
        upscaler(tile)
    seconds: dict[str, list[float]] = {name: [] for name in upscalers}
    for _ in range(repeats):
        for name, upscaler in upscalers.items():
            began = time.perf_counter()
            upscaler(tile)
            seconds[name].append(time.perf_counter() - began)
    return seconds


def psnr_rows(int8: Any, reference: Any, photos: list[Path], engine: Any, max_edge: int) -> list[dict]:
    """Each photo through the Restorer untiled, int8 vs fp32: PSNR and the largest sample difference."""
    from pipeline.evaluation.fidelity import UntiledUpscaler, compare, options_for_fidelity
    from pipeline.imageio import load_image
    from pipeline.options import RestoreOptions
    from pipeline.restorer import Restorer

    options = options_for_fidelity(RestoreOptions(model=MODEL))

    def restorer(upscaler: Any) -> Restorer:
        whole = UntiledUpscaler(upscaler)
        return Restorer(engine, upscaler_loader=lambda *_: whole)

    ours, theirs = restorer(int8), restorer(reference)
    rows = []
    for path in photos:
        image = load_image(path)
        image = dataclasses.replace(image, pixels=centre_crop(image.pixels, max_edge))
        began = time.perf_counter()
        test, report = ours.restore(image, options)
        int8_s = time.perf_counter() - began
        began = time.perf_counter()
        expected, _ = theirs.restore(image, options)
        fp32_s = time.perf_counter() - began
        result = compare(test.pixels, expected.pixels)
        row = {
            "input": path.name,
            "size": f"{image.width}x{image.height}",
            "mode": report.input_mode,
            "psnr_db": round(result.psnr_db, 2),
            "max_diff": result.max_diff,
            "int8_s": round(int8_s, 1),
            "fp32_s": round(fp32_s, 1),
            "load": load_average(),
        }
        print(row, file=sys.stderr, flush=True)
        rows.append(row)
    return rows


# --- the run ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from daemon.settings import Settings
    from pipeline.backends import load_upscaler, upscaler_ir
    from pipeline.backends.ir import compile_ir, new_core, read_network, save_ir
    from pipeline.backends.openvino_backend import OpenVinoUpscaler

    settings = Settings.load(state_dir=Path(args.state_dir), threads=args.threads, backend="openvino")
    engine = settings.engine_config()
    network = upscaler_ir(MODEL, engine)
    load_start = load_average()

    began = time.perf_counter()
    quantized, ignored = quantize(network.xml, args, calibration_crops(args.calibration))
    quantize_s = time.perf_counter() - began
    out = Path(args.out)
    int8_xml = out / f"{MODEL}-int8-{variant(args)}.xml"
    record = {"architecture": network.architecture, "scale": network.scale, "size_multiple": 1}
    save_ir(quantized, int8_xml, record)

    default = load_upscaler(MODEL, engine)
    precision = default.info.precision
    reference = default
    if precision != "fp32":
        reference = load_upscaler(MODEL, dataclasses.replace(engine, precision="fp32"))
    int8_network = read_network(int8_xml)
    assert int8_network is not None  # just written
    int8_info = dataclasses.replace(default.info, reason=f"int8 IR ({args.preset}), {precision} elsewhere")
    int8 = OpenVinoUpscaler(int8_network, int8_info, engine)

    rgb = packaged_photo(args.tile, args.tile).astype(np.float32) / 255.0
    tile = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])
    load_speed = load_average()
    seconds = time_alternating({precision: default, "int8": int8}, tile, args.repeats)
    low, total = int8_convolutions(
        compile_ir(new_core(engine.cache_dir), int8_xml, precision, default.threads)
    )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    speedup = medians[precision] / medians["int8"]

    scored = scored_photos(args.photos, Path(tempfile.mkdtemp(prefix="bench-int8-")))
    photos = psnr_rows(int8, reference, scored, engine, args.max_edge)
    worst = min(row["psnr_db"] for row in photos)
    ship = speedup >= MIN_SPEEDUP and worst >= MIN_PSNR_DB
    return {
        "machine": machine(),
        "threads": default.threads,
        "default_precision": precision,
        "runtime": default.runtime_properties(),
        "preset": args.preset,
        "ranges": args.ranges,
        "overflow_fix": args.overflow_fix,
        "float_convolutions": ignored,
        "calibration": {"crops": args.calibration, "photos": CALIBRATION_PHOTOS, "edges": CALIBRATION_EDGES},
        "quantize_s": round(quantize_s, 1),
        "int8_ir": str(int8_xml),
        "int8_convolutions": [low, total],
        "tile": args.tile,
        "seconds": seconds,
        "median_s": medians,
        "speedup": speedup,
        "photos": photos,
        "min_psnr_db": worst,
        "ship": ship,
        "load": {"start": load_start, "speed": load_speed, "end": load_average()},
    }


def report(result: dict[str, Any], out: Path) -> None:
    precision = result["default_precision"]
    median = result["median_s"]
    low, total = result["int8_convolutions"]
    verdict = "ship as a preset" if result["ship"] else "do not ship"
    floats = ", ".join(result["float_convolutions"]) or "none"
    notes = [
        f"Machine: {result['machine']}; {result['threads']} threads; load average (1/5/15) at start "
        f"{result['load']['start']}, during the timing {result['load']['speed']}, at the end "
        f"{result['load']['end']}.",
        f"{MODEL} int8: NNCF preset {result['preset']}, {result['ranges']} activation ranges, overflow "
        f"fix {result['overflow_fix']}, fast bias correction, {result['calibration']['crops']} calibration "
        f"crops, float convolutions: {floats}; quantised in {result['quantize_s']} s; {low} of {total} "
        "convolutions run in int8 (runtime model).",
        f"Decision: {verdict} (bar: >= {MIN_SPEEDUP}x faster than {precision} at >= {MIN_PSNR_DB:.0f} dB "
        f"min; measured {result['speedup']:.2f}x at {result['min_psnr_db']:.2f} dB min).",
    ]
    speed_rows = [
        [
            f"{result['tile']}x{result['tile']} tile",
            f"{median[precision]:.2f}",
            f"{median['int8']:.2f}",
            f"{result['speedup']:.2f}x",
            str(len(result["seconds"]["int8"])),
        ]
    ]
    header = ["input", f"default ({precision}) s", "int8 s", "speed-up", "calls each (median)"]
    emit(out, "int8-speed", header, speed_rows, notes, {k: v for k, v in result.items() if k != "photos"})
    quality_rows = [
        [row["input"], row["size"], row["mode"], f"{row['psnr_db']:.2f}", f"{row['max_diff']:.0f}"]
        for row in result["photos"]
    ]
    quality_rows.append(["**minimum**", "", "", f"**{result['min_psnr_db']:.2f}**", ""])
    header = ["photo (int8 vs fp32, untiled)", "size", "mode", "PSNR dB", "max diff /255"]
    emit(out, "int8-quality", header, quality_rows, [], result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=None, help="folder of real photos to score")
    parser.add_argument("--preset", choices=("mixed", "performance"), default="mixed")
    parser.add_argument("--float-ends", action="store_true", help="keep the first and last conv in float")
    parser.add_argument("--float-upsampler", action="store_true", help="keep the 4x upsampler in float")
    parser.add_argument("--ranges", choices=("minmax", "default"), default="minmax")
    parser.add_argument(
        "--overflow-fix",
        choices=("first", "all"),
        default="first",
        help="7-bit weights in the first quantised conv only (NNCF's default) or in all: int8 without VNNI "
        "sums u8 x s8 pairs in 16 bits, which saturates with full-range weights",
    )
    parser.add_argument("--calibration", type=int, default=32, help="calibration crops")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per model")
    parser.add_argument("--tile", type=int, default=256, help="timed input tile edge")
    parser.add_argument("--max-edge", type=int, default=320, help="scored photos are cropped to this")
    parser.add_argument("--state-dir", default=str(ROOT / "var" / "bench-state"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "int8"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report(run(args), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
