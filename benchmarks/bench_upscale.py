"""Upscaling at the machine's limit: efficiency, bounded compile state, fidelity, per-part rates.

Efficiency = useful work (the network's FLOP per input pixel x input pixels) / (this machine's GEMM rate
x wall seconds), with the GEMM (torch 4096x4096 matmul, bf16 where the CPU has it, same threads) measured
in the same run right before and after each timed process: a ratio that means the same on any machine.

    python benchmarks/bench_upscale.py efficiency [--sizes 256x256,1297x1920] [--photos DIR] [--reference]
        whole `restorer restore` processes (a fresh process per input, from a warm cache: conversion and
        compilation happened in an untimed first process), wall seconds, upscale-stage seconds from the
        JSON report, peak RSS (wait4), efficiency of both. --reference also runs the official realesrgan
        0.3.0 (fp32, tile=0, its own venv: benchmarks/bench_reference.py) as a whole process on the same
        inputs up to 512x512, alternating with ours.
    python benchmarks/bench_upscale.py sizes [--count 30]
        COUNT photos of distinct small sizes restored by ONE `restorer restore` process: its peak RSS,
        and what the state directory gained (files, MB) - the compile cache must not grow per size.
    python benchmarks/bench_upscale.py fidelity [--photos DIR]
        default output vs untiled fp32 output (pipeline/evaluation/fidelity.py) for every image in DIR
        (Real-ESRGAN's inputs/ folder: gray, RGBA, 16-bit, JPEG) and the packaged photos.
    python benchmarks/bench_upscale.py rates [--tiles 128,256,384,512]
        seconds and GFLOP/s of the whole network, the trunk and the upsampler alone at each tile edge
        (one process, OpenVINO, default precision): the measurement behind the tile sizes in
        pipeline/backends/openvino_backend.py.

Inputs: WxH sizes are cut from skimage's packaged photos (covered and centre-cropped, never stretched);
--photos DIR adds the images in DIR (nothing from it is ever copied into this repository). Every mode
prints a Markdown table (for docs/performance.md) and writes JSON under --out. The machine is named and
the load average recorded: numbers from a loaded machine are pessimistic, compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "RealESRGAN_x4plus"
PHOTO_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}


# --- shared -------------------------------------------------------------------------------------------


def machine() -> str:
    from pipeline.backends.base import available_cores, cpu_bf16_flag, cpu_flags
    from pipeline.evaluation.bench import _cpu_model_name

    flags = cpu_flags()
    extras = [flag for flag in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni") if flag in flags]
    bf16 = cpu_bf16_flag(flags) or "no bf16"
    return (
        f"{_cpu_model_name()} ({platform.machine()}), {available_cores()} cores, {', '.join(extras) or bf16}"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def gemm_dtype() -> str:
    """bf16 where the CPU has bf16 dot products, else fp32: the rate the network's own precision runs at."""
    from pipeline.backends.base import cpu_bf16_flag, cpu_flags

    return "bf16" if cpu_bf16_flag(cpu_flags()) else "fp32"


def gemm(threads: int) -> Any:
    from pipeline.evaluation.bench import measure_gemm

    return measure_gemm(gemm_dtype(), threads)


def packaged_photo(width: int, height: int) -> np.ndarray:
    """A real photo of exactly width x height (skimage's, covered and centre-cropped)."""
    from pipeline.evaluation.bench import bench_photo

    return bench_photo(width, height, None)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    cv2.imwrite(str(path), bgr)
    return path


def photos_in(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@dataclass
class ProcessRun:
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stderr_tail: str


def run_process(command: list[str], env: dict[str, str] | None = None) -> ProcessRun:
    """Wall time from spawn to exit and the child's own peak RSS (os.wait4: this child only)."""
    began = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert child.stderr is not None
    stderr = child.stderr.read()  # drained while it runs, so a chatty child never blocks on the pipe
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    tail = "\n".join(stderr.decode(errors="replace").strip().splitlines()[-5:])
    return ProcessRun(wall, usage.ru_maxrss / 1024, child.returncode, tail)


def restorer_command(inputs: list[Path], out: Path, report: Path, state: Path, extra: list[str]) -> list[str]:
    """The user's command: `restorer restore` (the console script next to this interpreter)."""
    script = Path(sys.executable).with_name("restorer")
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "app.cli"]
    paths = [str(p) for p in inputs]
    return [
        *head,
        "restore",
        *paths,
        "-o",
        str(out),
        "--report",
        str(report),
        "--state-dir",
        str(state),
        *extra,
    ]


def warm_cache(state: Path, extra: list[str], work: Path) -> None:
    """One untimed process that converts the weights and compiles the networks into `state`."""
    source = write_png(work / "warm" / "warm-64x64.png", packaged_photo(64, 64))
    run = run_process(restorer_command([source], work / "warm-out", work / "warm.json", state, extra))
    if run.returncode != 0:
        raise SystemExit(f"warm-up process failed:\n{run.stderr_tail}")


def flops_per_pixel(state: Path) -> float:
    """Counted by torch in a process of its own: this one must stay small, because a child's peak RSS
    (wait4's ru_maxrss) starts from the RSS of the process that spawned it. With torch and the model
    loaded here (~1.1 GB), every smaller restore measured as 1.1 GB."""
    count = (
        "import sys; from daemon.settings import Settings; "
        "from pipeline.evaluation.bench import flops_per_input_pixel; "
        "s = Settings.load(state_dir=sys.argv[1], model=sys.argv[2]); "
        "print(flops_per_input_pixel(sys.argv[2], s.weights_dir, s.cache_dir))"
    )
    command = [sys.executable, "-c", count, str(state), MODEL]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1])


def emit(out: Path, name: str, header: list[str], rows: list[list[str]], notes: list[str], data: Any) -> None:
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join([*notes, "", *table])
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


# --- efficiency ---------------------------------------------------------------------------------------


@dataclass
class EfficiencyRow:
    input: str
    pixels: int
    ours: ProcessRun
    gemm_gflops: float  # mean of the measurements right before and after this process
    upscale_s: float
    tiles: int
    tile_size: int | None
    engine: str
    load: str
    reference: ProcessRun | None = None
    notes: list[str] = field(default_factory=list)


def bench_efficiency(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-efficiency-"))
    state = Path(args.state_dir)
    extra = ["--threads", str(args.threads)] + ([] if args.faces else ["--no-face"])
    inputs = [write_png(work / "inputs" / f"photo-{w}x{h}.png", packaged_photo(w, h)) for w, h in args.sizes]
    inputs += photos_in(args.photos)
    warm_cache(state, extra, work)
    flops = flops_per_pixel(state)
    reference = _reference_setup(work) if args.reference else None
    rows = []
    for path in inputs:
        width, height = image_size(path)
        before = gemm(args.threads).gflops
        load = load_average()
        report = work / f"{path.stem}.json"
        ours = run_process(restorer_command([path], work / "out", report, state, extra))
        after = gemm(args.threads).gflops
        if ours.returncode != 0:
            raise SystemExit(f"{path.name}: restorer failed:\n{ours.stderr_tail}")
        entry = json.loads(report.read_text())[0]
        row = EfficiencyRow(
            input=f"{path.name} {width}x{height}",
            pixels=width * height,
            ours=ours,
            gemm_gflops=(before + after) / 2,
            upscale_s=sum(v for k, v in entry["stage_seconds"].items() if k.startswith("upscale")),
            tiles=entry["tiles"],
            tile_size=entry["tile_size"],
            engine=f"{entry['backend']} {entry['precision']}",
            load=load,
        )
        if reference is not None and width * height <= 512 * 512:
            row.reference = _reference_run(reference, path, work)
        print(json.dumps(asdict(row), default=str), file=sys.stderr, flush=True)
        rows.append(row)
    _efficiency_table(rows, flops, args)


def _reference_setup(work: Path) -> tuple[Path, Path]:
    from benchmarks import bench_reference

    python = bench_reference.ensure_ref_venv(bench_reference.REF_VENV)
    return python, bench_reference.reference_weights(work)


def _reference_run(reference: tuple[Path, Path], path: Path, work: Path) -> ProcessRun:
    """The official implementation as a whole process: import, build, load weights, one enhance, write."""
    python, weights = reference
    job = {"input": str(path), "output": str(work / f"{path.stem}.ref.png"), "weights": str(weights)}
    job["pixels"], job["once"] = 0, True
    script = ROOT / "benchmarks" / "bench_reference.py"
    run = run_process([str(python), str(script), "--worker", "ref", json.dumps(job)])
    if run.returncode != 0:
        raise SystemExit(f"reference failed on {path.name}:\n{run.stderr_tail}")
    return run


def _efficiency_table(rows: list[EfficiencyRow], flops: float, args: argparse.Namespace) -> None:
    header = [
        "input",
        "whole process s",
        "upscale s",
        "tiles (tile)",
        f"{gemm_dtype()} GEMM GFLOP/s",
        "efficiency whole",
        "efficiency upscale",
        "peak RSS MB",
        "reference s (speed-up)",
        "load avg 1/5/15",
    ]
    table = []
    for r in rows:
        useful = flops * r.pixels / 1e9
        reference = "-"
        if r.reference is not None:
            reference = f"{r.reference.wall_s:.1f} ({r.reference.wall_s / r.ours.wall_s:.2f}x)"
        table.append(
            [
                r.input,
                f"{r.ours.wall_s:.1f}",
                f"{r.upscale_s:.1f}",
                f"{r.tiles} ({r.tile_size})",
                f"{r.gemm_gflops:.0f}",
                f"{useful / r.gemm_gflops / r.ours.wall_s:.2f}",
                f"{useful / r.gemm_gflops / r.upscale_s:.2f}" if r.upscale_s > 0 else "-",
                f"{r.ours.peak_rss_mb:.0f}",
                reference,
                r.load,
            ]
        )
    notes = [
        f"Machine: {machine()}. Model {MODEL}: {flops / 1e6:.2f} MFLOP per input pixel. "
        f"Threads: {args.threads}. Faces: {'on' if args.faces else 'off'}.",
        "Whole process: `restorer restore INPUT` from spawn to exit (imports, model load from a warm cache, "
        "decode, restore, encode, write); upscale: the report's upscale stage(s). Efficiency: useful FLOP / "
        "(GEMM rate x seconds); the GEMM is measured right before and after each process (mean shown).",
    ]
    emit(Path(args.out), "efficiency", header, table, notes, [asdict(r) for r in rows])


# --- sizes --------------------------------------------------------------------------------------------


def distinct_sizes(count: int) -> list[tuple[int, int]]:
    """COUNT distinct small sizes, all under one tile on every axis (what used to compile a network each)."""
    return [(40 + 5 * i, 200 - 4 * i) for i in range(count)]


def bench_sizes(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sizes-"))
    warm_state = Path(args.state_dir)
    extra = ["--threads", str(args.threads), "--no-face"]
    warm_cache(warm_state, extra, work)
    state = work / "state"  # a copy of the warm state: its growth is this run's alone
    shutil.copytree(warm_state, state)
    folder = work / "small"
    for width, height in distinct_sizes(args.count):
        write_png(folder / f"small-{width}x{height}.png", packaged_photo(width, height))
    files_before, bytes_before = _tree(state)
    load = load_average()
    run = run_process(restorer_command([folder], work / "out", work / "sizes.json", state, extra))
    if run.returncode != 0:
        raise SystemExit(f"restorer failed:\n{run.stderr_tail}")
    files_after, bytes_after = _tree(state)
    entries = json.loads((work / "sizes.json").read_text())
    header = [
        "images (distinct sizes)",
        "seconds",
        "peak RSS MB",
        "state files before -> after",
        "state growth MB",
        "state MB after",
        "load avg",
    ]
    row = [
        f"{len(entries)} ({len({tuple(e['input_size']) for e in entries})})",
        f"{run.wall_s:.1f}",
        f"{run.peak_rss_mb:.0f}",
        f"{files_before} -> {files_after}",
        f"{(bytes_after - bytes_before) / 1e6:.1f}",
        f"{bytes_after / 1e6:.0f}",
        load,
    ]
    notes = [
        f"Machine: {machine()}. One `restorer restore FOLDER --no-face` process over {args.count} photos of "
        f"distinct sizes from {distinct_sizes(args.count)[0]} to {distinct_sizes(args.count)[-1]} (each "
        "smaller than one tile), from a warm state directory (copied, so its growth is this run's).",
    ]
    data = {"run": asdict(run), "files": [files_before, files_after], "bytes": [bytes_before, bytes_after]}
    emit(Path(args.out), "sizes", header, [row], notes, data)


def _tree(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


# --- fidelity -----------------------------------------------------------------------------------------


def bench_fidelity(args: argparse.Namespace) -> None:
    from daemon.settings import Settings
    from pipeline.evaluation.fidelity import compare, options_for_fidelity, reference_restorer, seam_mask
    from pipeline.imageio import load_image
    from pipeline.restorer import Restorer
    from pipeline.tiling import DEFAULT_BLEND, DEFAULT_PAD

    settings = Settings.load(state_dir=Path(args.state_dir), threads=args.threads)
    engine = settings.engine_config()
    default, reference = Restorer(engine), reference_restorer(engine)
    options = options_for_fidelity(settings.restore_options())
    work = Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    inputs = photos_in(args.photos)
    inputs += [write_png(work / f"photo-{w}x{h}.png", packaged_photo(w, h)) for w, h in args.sizes]
    rows, data = [], []
    load = load_average()
    for path in inputs:
        image = load_image(path)
        began = time.perf_counter()
        tiled, report = default.restore(image, options)
        tiled_s = time.perf_counter() - began
        whole, _ = reference.restore(image, options)
        seams = seam_mask(image.height, image.width, report.tile_size or 0, DEFAULT_PAD, DEFAULT_BLEND, 4)
        result = compare(tiled.pixels, whole.pixels, seams)
        entry = {
            "input": path.name,
            "size": f"{image.width}x{image.height}",
            "mode": report.input_mode,
            "tiles": report.tiles,
            "tile": report.tile_size,
            "engine": f"{report.backend} {report.precision}",
            "tiled_s": round(tiled_s, 1),
            **asdict(result),
        }
        print(json.dumps(entry), file=sys.stderr, flush=True)
        data.append(entry)
        rows.append(
            [
                entry["input"],
                entry["size"],
                entry["mode"],
                f"{entry['tiles']} ({entry['tile']})",
                f"{result.psnr_db:.2f}",
                f"{result.max_diff:.0f}",
                f"{result.max_diff_on_seams:.0f}",
            ]
        )
    worst = min(entry["psnr_db"] for entry in data)
    notes = [
        f"Machine: {machine()}; load average {load}. Default engine ({data[0]['engine']}, default tile and "
        "context) vs torch fp32 on each whole plane, same Restorer flow, faces off, 4x. "
        f"Minimum over the inputs: {worst:.2f} dB.",
    ]
    header = ["input", "size", "mode", "tiles (tile)", "PSNR dB", "max diff /255", "max on seams /255"]
    emit(Path(args.out), "fidelity", header, rows, notes, data)


# --- rates --------------------------------------------------------------------------------------------


def bench_rates(args: argparse.Namespace) -> None:
    """Whole network vs trunk vs upsampler at each tile edge: best of --repeats, wall and CPU seconds."""
    import openvino as ov

    from daemon.settings import Settings
    from pipeline.backends import load_upscaler
    from pipeline.backends.openvino_backend import split_at_upsampler

    settings = Settings.load(state_dir=Path(args.state_dir), threads=args.threads, backend="openvino")
    upscaler = load_upscaler(MODEL, settings.engine_config())
    core = ov.Core()
    ir = str(upscaler.dynamic_ir())
    trunk, upsampler = split_at_upsampler(core.read_model(ir), core.read_model(ir))
    config = {
        "INFERENCE_PRECISION_HINT": upscaler.runtime_properties()["INFERENCE_PRECISION_HINT"],
        "INFERENCE_NUM_THREADS": args.threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    parts = {
        "network": (core.compile_model(core.read_model(ir), "CPU", config), 3, 35.85e6),
        "trunk": (core.compile_model(trunk, "CPU", config), 3, 33.14e6),
        "upsampler": (core.compile_model(upsampler, "CPU", config), 64, 2.71e6),
    }
    rows, data = [], []
    for tile in args.tiles:
        for name, (compiled, channels, flops) in parts.items():
            request = compiled.create_infer_request()
            x = np.random.default_rng(0).random((1, channels, tile, tile), dtype=np.float32)
            request.infer({0: x})  # the first call of a shape builds its primitives
            walls, cpus = [], []
            for _ in range(args.repeats):
                cpu, began = time.process_time(), time.perf_counter()
                request.infer({0: x})
                walls.append(time.perf_counter() - began)
                cpus.append((time.process_time() - cpu) / args.threads)
            wall, cpu_s = min(walls), min(cpus)
            gflops = flops * tile * tile / 1e9
            entry = {
                "part": name,
                "tile": tile,
                "wall_s": wall,
                "cpu_s_per_thread": cpu_s,
                "gflops_wall": gflops / wall,
                "gflops_cpu": gflops / cpu_s,
                "load": load_average(),
            }
            print(json.dumps(entry), file=sys.stderr, flush=True)
            data.append(entry)
            cells = [name, str(tile), f"{wall:.3f}", f"{gflops / wall:.0f}", f"{cpu_s:.3f}"]
            rows.append([*cells, f"{gflops / cpu_s:.0f}", entry["load"]])
    notes = [
        f"Machine: {machine()}. {MODEL} through OpenVINO ({config['INFERENCE_PRECISION_HINT']}, "
        f"{args.threads} threads), dynamic-shape compiled models, best of {args.repeats} after one "
        "untimed call per shape. FLOP per input pixel: network 35.85 M, trunk 33.14 M, upsampler 2.71 M "
        "(per FEATURE pixel). CPU seconds per thread approximate a quiet machine's wall time under load.",
    ]
    header = ["part", "tile", "wall s", "GFLOP/s (wall)", "CPU s / thread", "GFLOP/s (CPU)", "load avg"]
    emit(Path(args.out), "rates", header, rows, notes, data)


# --- command line -------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    from pipeline.evaluation.bench import parse_sizes as parse

    return parse(text) if text else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    efficiency = sub.add_parser("efficiency")
    efficiency.add_argument("--sizes", type=parse_sizes, default=parse_sizes("256x256,1297x1920"))
    efficiency.add_argument("--reference", action="store_true", help="also the official realesrgan (fp32)")
    efficiency.add_argument("--faces", action="store_true", help="faces on (the default settings)")
    sizes = sub.add_parser("sizes")
    sizes.add_argument("--count", type=int, default=30)
    fidelity = sub.add_parser("fidelity")
    fidelity.add_argument("--sizes", type=parse_sizes, default=parse_sizes(""))
    rates = sub.add_parser("rates")
    rates.add_argument("--tiles", type=lambda t: [int(v) for v in t.split(",")], default=[128, 256, 384, 512])
    rates.add_argument("--repeats", type=int, default=3)
    for mode in (efficiency, sizes, fidelity, rates):
        mode.add_argument("--photos", type=Path, default=None, help="folder of photos to add")
        mode.add_argument("--state-dir", default=str(ROOT / "var" / "bench-state"))
        mode.add_argument("--threads", type=int, default=os.cpu_count() or 1)
        mode.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "upscale"))
    args = parser.parse_args(argv)
    modes = {
        "efficiency": bench_efficiency,
        "sizes": bench_sizes,
        "fidelity": bench_fidelity,
        "rates": bench_rates,
    }
    modes[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
