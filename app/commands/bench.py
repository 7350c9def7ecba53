"""`restorer bench`: seconds per image, input MP/s, GFLOP/s, efficiency and peak RSS for the
super-resolution stage, the face stage and the whole pipeline; then what an image costs on the machines
of a price list, from the measured seconds only (machines that did not run here: "not measured").

Efficiency = the network's useful GFLOP/s / this machine's GEMM rate, measured here before and after the
runs with the same threads (torch 4096x4096 matmul, bf16 where the CPU has bf16 dot products; printed).

Sizes: `sweep` (64x64, 128x128, 256x256; the default, a few minutes on 2 cores), `seed` (the seed's
546x729, 364x358, 320x320: RealESRGAN_x4plus needs ~1.5 min per 546x729 image per stage on 2 cores),
`full` (both and 512x512), or WxH values, mixable: --sizes seed,1024x768.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from app.flags import ENGINE_FIELDS, command_parser, settings_from_args

if TYPE_CHECKING:
    from pipeline.evaluation.bench import CpuPeaks, GemmRate, Measurement
    from pipeline.evaluation.costs import Price


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "time the SR stage, face stage and whole pipeline; cost per image from a price list"
    parser = command_parser(sub, "bench", summary, ENGINE_FIELDS, description=__doc__ or "")
    parser.add_argument("--sizes", default="sweep", help="sweep | seed | full | WxH,... (default sweep)")
    parser.add_argument("--stages", default="sr,faces,pipeline", help="comma list of sr, faces, pipeline")
    parser.add_argument("--prices", type=Path, default=None, help="price list TOML (default: built-in)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per measurement (median)")
    parser.add_argument("--image", type=Path, default=None, help="photo to crop to each size")
    parser.add_argument("--out", type=Path, default=None, help="also write bench.md and bench.json here")
    parser.add_argument(
        "--gemm-size",
        type=int,
        default=None,
        help="edge of the GEMM yardstick (default 4096 on a CPU, 8192 on a GPU)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline import RestoreError
    from pipeline.evaluation import bench, costs

    try:
        sizes = bench.parse_sizes(args.sizes)
        stages = _parse_stages(args.stages)
        prices = costs.load_prices(args.prices)
    except ValueError as error:
        print(f"restorer bench: {error}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("restorer bench: --repeats must be at least 1", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    if len(settings.model) != 1:
        print("restorer bench: measures one model at a time; give --model ID", file=sys.stderr)
        return 2
    (model,) = settings.model
    engine = settings.engine_config()
    peaks = bench.cpu_peaks()
    try:
        flops = bench.flops_per_input_pixel(model, settings.weights_dir, settings.cache_dir)
    except RestoreError as error:
        print(f"restorer bench: {error}", file=sys.stderr)
        return 1
    threads = bench.threads_for(engine)
    device, gemm_dtype = bench.yardstick(engine, peaks)
    print(
        f"measuring the {gemm_dtype} GEMM rate ({device}, {threads} threads) ... ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    before = bench.measure_gemm(gemm_dtype, threads, args.gemm_size, device=device)
    print(f"{before.gflops:.0f} GFLOP/s", file=sys.stderr, flush=True)

    measurements = []
    for width, height in sizes:
        for stage in stages:
            spec = bench.BenchSpec(
                stage=stage,
                width=width,
                height=height,
                model=model,
                engine=asdict(engine),
                repeats=args.repeats,
                image=str(args.image) if args.image else None,
            )
            print(f"measuring {stage} {width}x{height} ... ", end="", file=sys.stderr, flush=True)
            result = bench.measure(spec)
            print(result.error or f"{result.median_s:.2f} s", file=sys.stderr, flush=True)
            measurements.append(result)
    bench.fill_hardware(measurements, peaks)
    after = bench.measure_gemm(gemm_dtype, threads, args.gemm_size, device=device)
    gemm = bench.GemmRate(gemm_dtype, threads, before.size, (before.gflops + after.gflops) / 2, device)
    report = _report(model, flops, peaks, gemm, (before, after), measurements, prices)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.md").write_text(report + "\n", encoding="utf-8")
        data = {
            "model": model,
            "flops_per_input_pixel": flops,
            "gemm": asdict(gemm),
            "gemm_before_after": [before.gflops, after.gflops],
            "load_average": list(os.getloadavg()),
            "hardware": peaks.description,
            "measurements": [
                {**m.to_dict(), "efficiency": bench.row_efficiency(m, {gemm.dtype: gemm}, flops)}
                for m in measurements
            ],
        }
        (args.out / "bench.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return 1 if any(m.error for m in measurements) else 0


def _parse_stages(text: str) -> list[str]:
    from pipeline.evaluation.bench import STAGES

    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"unknown stage(s) {', '.join(unknown) or '(none)'}; known: {', '.join(STAGES)}")
    return stages


def _report(
    model: str,
    flops: float,
    peaks: CpuPeaks,
    gemm: GemmRate,
    before_after: tuple[GemmRate, GemmRate],
    measurements: list[Measurement],
    prices: list[Price],
) -> str:
    from pipeline.evaluation import bench, costs

    workloads = [
        costs.Workload(f"{m.spec.stage} {m.spec.width}x{m.spec.height}", m.hardware, m.median_s)
        for m in measurements
        if m.error is None and m.spec.stage in ("pipeline", "sr")
    ]
    before, after = before_after
    load = os.getloadavg()
    lines = [
        f"Hardware: {peaks.description}; load average {load[0]:.2f} (1 min) at the end.",
        f"Yardstick: {gemm.describe()} = mean of {before.gflops:.0f} before and {after.gflops:.0f} after "
        "the runs.",
        f"Model {model}: {flops / 1e6:.2f} MFLOP per input pixel (counted on the network's convolutions).",
        "",
        bench.bench_markdown(measurements, {gemm.dtype: gemm}, flops),
        "",
        "s/image: median wall time of the restore call(s), model already loaded (load s: loading and "
        "compiling, once per process; inputs up to 320x320 get one untimed first call before). "
        "GFLOP/s: the SR network's FLOP for the input / s/image; efficiency: that / the GEMM rate above "
        "(CPU rows whose precision matches it). Peak RSS: the whole worker process (one per row).",
        "",
        "Cost per image (measured seconds x price; machines that did not run this benchmark are "
        '"not measured", never estimated):',
        "",
        costs.cost_markdown(costs.cost_table(prices, workloads)),
    ]
    notes = sorted({note for m in measurements for note in m.notes})
    if notes:
        lines += ["", "Notes from the runs:", *[f"- {note}" for note in notes]]
    return "\n".join(lines)
