"""MFLOP per pixel and measured efficiency of each architecture family users bring (issue 22 item 3).

For each family, at the configuration of its common released files (random weights: speed does not
depend on the values), the network's FLOPs are counted with torch.utils.flop_counter on a 64x64 input,
the network is converted the way the daemon converts it (pipeline.backends.ir.convert_image_network:
traced, checked against torch at another size), and the OpenVINO fp32 model is timed on a 128x128 tile
with the engine's threads. Efficiency = useful FLOP/s over the fp32 GEMM rate measured in the same run
(pipeline.evaluation.bench.measure_gemm, the yardstick `restorer bench` uses).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_architectures.py [--threads 2] [--only ESRGAN,SPAN]

Prints one markdown row per family as it finishes (docs/performance.md keeps the table).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

FLOP_SIDE = 64
TIME_SIDE = 128
REPEATS = 3


def _families() -> dict[str, Callable[[], Any]]:
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.DAT import DAT
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.FBCNN import FBCNN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.RealCUGAN import UpCunet2x
    from spandrel.architectures.SCUNet import SCUNet
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    return {
        "ESRGAN x4 (RealESRGAN_x4plus: 23 blocks, 64 ch)": lambda: ESRGAN(scale=4),
        "Compact x4 (realesr-general-x4v3: 32 convs)": lambda: Compact(num_conv=32, upscale=4),
        "SPAN x4 (48 ch)": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4),
        "SwinIR-light x4 (60 dim, 4x6 blocks, window 8)": lambda: SwinIR(
            upscale=4,
            img_size=64,
            window_size=8,
            embed_dim=60,
            depths=[6, 6, 6, 6],
            num_heads=[6, 6, 6, 6],
            mlp_ratio=2,
            upsampler="pixelshuffledirect",
        ),
        "SCUNet 1x (64 dim, 4 per stage)": lambda: SCUNet(in_nc=3, config=[4] * 7, dim=64),
        "FBCNN 1x (64-512 ch, 4 blocks)": lambda: FBCNN(),
        "HAT-S x4 (144 dim, 6x6 blocks, window 16)": lambda: HAT(
            upscale=4,
            img_size=64,
            window_size=16,
            compress_ratio=24,
            squeeze_factor=24,
            embed_dim=144,
            depths=[6] * 6,
            num_heads=[6] * 6,
            mlp_ratio=2,
            upsampler="pixelshuffle",
        ),
        "DAT-light x4 (60 dim, 18 blocks)": lambda: DAT(
            upscale=4,
            embed_dim=60,
            depth=[18],
            num_heads=[6],
            expansion_factor=2,
            split_size=[8, 32],
            resi_connection="3conv",
            upsampler="pixelshuffledirect",
        ),
        "RealCUGAN 2x (UpCunet2x)": lambda: UpCunet2x(),
    }


def gflop_per_pixel(module: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(torch.rand(1, 3, FLOP_SIDE, FLOP_SIDE))
    return counter.get_total_flops() / (FLOP_SIDE * FLOP_SIDE) / 1e9


def seconds_per_tile(model: Any, threads: int) -> float:
    import numpy as np
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = ov.Core().compile_model(model, "CPU", config)
    tile = np.random.default_rng(0).random((1, 3, TIME_SIDE, TIME_SIDE), dtype=np.float32)
    compiled(tile)  # first inference: the plugin's one-time setup
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        compiled(tile)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    import spandrel
    import torch

    from pipeline.backends.ir import _descriptor_module, convert_image_network
    from pipeline.evaluation.bench import measure_gemm

    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated prefixes of family names")
    args = parser.parse_args()
    gemm = measure_gemm("fp32", args.threads)
    print(f"fp32 GEMM yardstick: {gemm.gflops:.1f} GFLOP/s ({args.threads} threads, {gemm.size}^2)")
    print("| family | MFLOP/px | s per 128x128 tile | GFLOP/s | efficiency vs fp32 GEMM | IR multiple |")
    print("|---|---|---|---|---|---|")
    wanted = [prefix for prefix in args.only.split(",") if prefix]
    for name, build in _families().items():
        if wanted and not any(name.startswith(prefix) for prefix in wanted):
            continue
        torch.manual_seed(0)
        descriptor = spandrel.ModelLoader().load_from_state_dict(build().eval().state_dict()).eval()
        per_pixel = gflop_per_pixel(_descriptor_module(descriptor).eval())
        try:
            model, multiple = convert_image_network(descriptor)
        except Exception as error:
            print(f"| {name} | {per_pixel * 1e3:.2f} | refused: {str(error)[:120]} | | | |", flush=True)
            continue
        seconds = seconds_per_tile(model, args.threads)
        rate = per_pixel * TIME_SIDE * TIME_SIDE / seconds
        share = rate / gemm.gflops
        row = f"| {name} | {per_pixel * 1e3:.2f} | {seconds:.3f} | {rate:.1f} | {share:.0%} | {multiple} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
