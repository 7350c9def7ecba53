"""Tiling and memory, measured on real photos with the real networks.

    python benchmarks/bench_tiling.py psnr [--images astronaut coffee chelsea] [--tile N]
        default tiled output (default backend/precision, default tile/pad) vs whole-image fp32 torch output
        of the same model: PSNR, the largest difference anywhere and on tile seams, seconds of each.
    python benchmarks/bench_tiling.py rss [--sizes 2000x1500 4000x3000] [--model ID] [--no-face]
        peak RSS of the full CLI path (decode JPEG -> Restorer.restore -> encode JPEG) at default settings,
        each size in its own process (resource.getrusage(RUSAGE_SELF).ru_maxrss), input = skimage
        astronaut resized to the size (a real photo, not noise).

Both print a Markdown table for docs/performance.md and a JSON line per row. The numbers depend on load:
run on a quiet machine and compare only rows from the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHOTOS = ("astronaut", "coffee", "chelsea")


def real_photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def psnr(difference: np.ndarray) -> float:
    mse = float((difference.astype(np.float64) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def bench_psnr(args: argparse.Namespace) -> None:
    from pipeline.backends import load_upscaler
    from pipeline.evaluation.fidelity import seam_mask
    from pipeline.tiling import DEFAULT_BLEND, DEFAULT_PAD, run_whole, upscale_tiled
    from pipeline.types import EngineConfig

    cache = str(Path(args.state_dir) / "cache")
    reference = load_upscaler(args.model, EngineConfig(cache_dir=cache, backend="torch", precision="fp32"))
    default = load_upscaler(args.model, EngineConfig(cache_dir=cache, tile=args.tile))
    tile = default.suggest_tile()
    info = default.info
    print(
        f"model {args.model}; tiled: {info.backend} {info.device} {info.precision}, tile {tile}, "
        f"pad {DEFAULT_PAD}, blend {DEFAULT_BLEND}; whole image: torch cpu fp32",
        file=sys.stderr,
    )
    rows = []
    for name in args.images:
        rgb = real_photo(name).astype(np.float32) / 255.0
        height, width = rgb.shape[:2]
        started = time.perf_counter()
        whole = np.clip(run_whole(rgb, reference) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        whole_seconds = time.perf_counter() - started
        upscale_tiled(rgb[:tile, :tile], default, tile, DEFAULT_PAD, np.uint8)  # compile the tile shape first
        started = time.perf_counter()
        tiled = upscale_tiled(rgb, default, tile, DEFAULT_PAD, np.uint8)
        tiled_seconds = time.perf_counter() - started
        difference = np.abs(tiled.pixels.astype(np.int16) - whole.astype(np.int16))
        seams = seam_mask(height, width, tile, DEFAULT_PAD, DEFAULT_BLEND, default.scale)
        row = {
            "photo": f"{name} {width}x{height}",
            "tiles": tiled.tiles,
            "psnr_db": round(psnr(difference), 2),
            "max_diff": int(difference.max()),
            "max_diff_on_seams": int(difference[seams].max()) if seams.any() else 0,
            "tiled_s": round(tiled_seconds, 1),
            "whole_fp32_s": round(whole_seconds, 1),
        }
        if args.isolate:  # split the difference: precision alone vs tiling alone
            same = np.clip(run_whole(rgb, default) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            precision = np.abs(same.astype(np.int16) - whole.astype(np.int16))
            tiling = np.abs(tiled.pixels.astype(np.int16) - same.astype(np.int16))
            row["precision_only_psnr_db"] = round(psnr(precision), 2)
            row["precision_only_max"] = int(precision.max())
            row["tiling_only_psnr_db"] = round(psnr(tiling), 2)
            row["tiling_only_max_on_seams"] = int(tiling[seams].max()) if seams.any() else 0
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(
        "\n| photo | tiles | PSNR tiled vs whole fp32 | max diff (/255) | max on seams | tiled s | whole s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['photo']} | {r['tiles']} | {r['psnr_db']} dB | {r['max_diff']} | "
            f"{r['max_diff_on_seams']} | {r['tiled_s']} | {r['whole_fp32_s']} |"
        )


def bench_rss(args: argparse.Namespace) -> None:
    rows = []
    # First a throwaway run that converts the weights and compiles the 256x256 tile shape into the state
    # dir's cache, as a daemon's first start does; the measured runs then start like a daemon restart.
    for size in ["320x320", *args.sizes]:
        command = [
            sys.executable,
            __file__,
            "rss-child",
            size,
            "--model",
            args.model,
            "--state-dir",
            args.state_dir,
        ]
        if args.no_face:
            command.append("--no-face")
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            print(finished.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{size}: child failed ({finished.returncode})")
        row = json.loads(finished.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        if size != "320x320" or "320x320" in args.sizes:
            rows.append(row)
    print("\n| input | output | model | faces | tiles (tile) | peak RSS | seconds |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['input']} | {r['output']} | {r['model']} | {r['faces']} | "
            f"{r['tiles']} ({r['tile_size']}) | {r['peak_rss_mb']} MB | {r['seconds']} |"
        )


def rss_child(args: argparse.Namespace) -> None:
    """One size, in a fresh process, through the same calls as `restorer restore`."""
    import cv2

    from daemon.settings import Settings
    from pipeline.imageio import encode_image, load_image
    from pipeline.restorer import Restorer
    from pipeline.types import Image

    width, height = (int(v) for v in args.size.split("x"))
    photo = cv2.resize(real_photo("astronaut"), (width, height), interpolation=cv2.INTER_CUBIC)
    source = encode_image(Image(photo, source_format="jpg"), "jpg", quality=92)
    del photo
    settings = Settings.load(state_dir=Path(args.state_dir), model=args.model, faces=not args.no_face)
    restorer = Restorer(settings.engine_config())
    options = settings.restore_options()
    started = time.perf_counter()
    image = load_image(source)
    output, report = restorer.restore(image, options)
    del image
    encoded = encode_image(output, "jpg", quality=options.quality)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "input": f"{width}x{height}",
                "output": f"{output.width}x{output.height}",
                "model": args.model,
                "faces": options.faces,
                "tiles": report.tiles,
                "tile_size": report.tile_size,
                "backend": f"{report.backend} {report.precision}",
                "peak_rss_mb": round(peak_kb / 1024),
                "seconds": round(seconds, 1),
                "jpeg_mb": round(len(encoded) / 1e6, 1),
                "stage_seconds": report.stage_seconds,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("psnr")
    p.add_argument("--images", nargs="+", default=list(PHOTOS), choices=PHOTOS)
    p.add_argument("--tile", type=int, default=None, help="cap the tile (default: what the backend suggests)")
    p.add_argument("--isolate", action="store_true", help="also run the default backend on the whole photo")
    r = sub.add_parser("rss")
    r.add_argument("--sizes", nargs="+", default=["2000x1500", "4000x3000"])
    r.add_argument("--no-face", action="store_true")
    c = sub.add_parser("rss-child")
    c.add_argument("size")
    c.add_argument("--no-face", action="store_true")
    for sp in (p, r, c):
        sp.add_argument("--model", default="RealESRGAN_x4plus")
        sp.add_argument("--state-dir", default=str(ROOT / "var" / "bench-state"))
    args = parser.parse_args()
    {"psnr": bench_psnr, "rss": bench_rss, "rss-child": rss_child}[args.mode](args)


if __name__ == "__main__":
    main()
