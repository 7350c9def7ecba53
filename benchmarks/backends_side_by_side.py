"""Side-by-side seconds of each CPU backend/precision on one whole 128x128 input (RealESRGAN_x4plus).

    .venv/bin/python benchmarks/backends_side_by_side.py [--size 128] [--model RealESRGAN_x4plus]

Conversion/compilation happen before the clock starts (warm-up on the same shape); each variant is then
timed for --runs runs and the output compared with torch fp32. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import data

from pipeline.backends import load_upscaler
from pipeline.types import EngineConfig

VARIANTS = [("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--model", default="RealESRGAN_x4plus")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse conversions between runs")
    args = parser.parse_args()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="restorer-bench-"))
    crop = data.astronaut()[:512:4, :512:4][: args.size, : args.size]
    x = np.ascontiguousarray(crop.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    reference = None
    print(
        f"model {args.model}, input {args.size}x{args.size}, load average at start {os.getloadavg()[0]:.1f}"
    )
    print("| backend | precision | seconds | PSNR vs torch fp32 |")
    print("|---|---|---:|---:|")
    for backend, precision in VARIANTS:
        engine = EngineConfig(
            weights_dir="weights", cache_dir=str(cache), backend=backend, device="cpu", precision=precision
        )
        upscaler = load_upscaler(args.model, engine)
        if hasattr(upscaler, "prepare"):
            upscaler.prepare(x.shape)  # OpenVINO: convert + compile this shape before timing
        else:
            upscaler(x[:, :, :16, :16])
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            out = upscaler(x)
            times.append(time.perf_counter() - started)
        if reference is None:
            reference = out
        mse = float(np.mean((out.astype(np.float64) - reference) ** 2))
        db = "identical" if mse == 0 else f"{10 * np.log10(1 / mse):.1f} dB"
        print(f"| {backend} | {precision} | {min(times):.2f} | {db} |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
