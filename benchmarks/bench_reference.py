"""This pipeline vs the reference implementation, side by side in ONE run on the same images.

Reference: the official `realesrgan==0.3.0` RealESRGANer (fp32 on CPU, tile=0, its defaults otherwise),
installed by this script into its own throwaway venv (benchmarks/.ref-venv, git-ignored) together with
basicsr 1.4.2; basicsr's stale `torchvision.transforms.functional_tensor` import is satisfied by a
one-line module alias before import. Weights: the very file our resolve_weights() produces
(RealESRGAN_x4plus converted from the embedded ncnn model), re-wrapped as {'params_ema': state_dict}.

Ours: pipeline.restorer.Restorer at default settings, end to end (PNG bytes -> load_image -> restore ->
encode_image PNG), faces at their default (on).

Each image runs in a fresh worker process per implementation, alternating ours / reference, so both see
the same machine load; peak RSS is that worker's ru_maxrss. Reported: seconds per image (model loaded),
input MP/s, GFLOP/s against this CPU's fp32 and bf16 peaks, peak RSS, PSNR of our output vs the
reference's.

    .venv/bin/python benchmarks/bench_reference.py                      # 3 photos at 256x256
    .venv/bin/python benchmarks/bench_reference.py --sizes 128x128,256x256 --images coffee
    .venv/bin/python benchmarks/bench_reference.py --ours-only 2000x1500 # RSS check, no reference

The reference code is installed, imported and run; it is never copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np  # present in both venvs: this file also runs under the reference venv's python

if TYPE_CHECKING:
    from pipeline.evaluation.bench import CpuPeaks

ROOT = Path(__file__).resolve().parent.parent
REF_VENV = ROOT / "benchmarks" / ".ref-venv"
REF_PACKAGES = [
    ["torch==2.14.1", "torchvision==0.29.1"],
    # basicsr's and realesrgan's own runtime imports (their declared deps also pull gfpgan, facexlib and
    # tb-nightly, which the RealESRGANer path never imports).
    ["numpy", "opencv-python-headless", "pyyaml", "scipy", "tqdm", "addict", "future", "lmdb", "yapf"],
    ["scikit-image", "requests", "Pillow", "-U", "setuptools", "wheel"],
    # basicsr is an sdist whose isolated build would fetch a second, newest torch: build against ours.
    ["--no-deps", "--no-build-isolation", "realesrgan==0.3.0", "basicsr==1.4.2"],
]
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


# --- reference venv -------------------------------------------------------------------------------------


def ensure_ref_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if python.exists() and _ref_imports(python):
        return python
    print(f"creating the reference venv in {venv} (once) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for packages in REF_PACKAGES:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    if not _ref_imports(python):
        raise SystemExit(f"the reference venv {venv} cannot import realesrgan; delete it and retry")
    return python


def _ref_imports(python: Path) -> bool:
    probe = [str(python), str(Path(__file__).resolve()), "--probe"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def reference_weights(out_dir: Path) -> Path:
    """The converted file resolve_weights() gives us, as the .pth container RealESRGANer reads."""
    import torch
    from safetensors.torch import load_file

    from daemon.settings import Settings
    from pipeline.weights import resolve_weights

    settings = Settings()
    resolved = resolve_weights("RealESRGAN_x4plus", settings.weights_dir, settings.cache_dir)
    if resolved.path.suffix == ".pth":
        return resolved.path
    target = out_dir / f"RealESRGAN_x4plus-{resolved.sha256[:12]}.pth"
    if not target.exists():
        torch.save({"params_ema": load_file(str(resolved.path))}, target)
    return target


# --- workers (one process per image and implementation) ---------------------------------------------------


def _import_reference() -> tuple[object, object]:
    import torchvision.transforms.functional as functional

    sys.modules["torchvision.transforms.functional_tensor"] = functional  # basicsr 1.4.2 imports this
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from realesrgan import RealESRGANer

    return RRDBNet, RealESRGANer


def ref_worker(job: dict) -> dict:
    import cv2
    import torch

    began = time.perf_counter()
    rrdbnet, realesrganer = _import_reference()
    network = rrdbnet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=4)
    upsampler = realesrganer(
        scale=4, model_path=job["weights"], model=network, tile=0, tile_pad=10, pre_pad=0, half=False,
        device=torch.device("cpu"),
    )  # fmt: skip
    load_s = time.perf_counter() - began

    def run_once() -> None:
        image = cv2.imread(job["input"], cv2.IMREAD_UNCHANGED)
        output, _ = upsampler.enhance(image, outscale=4)
        cv2.imwrite(job["output"], output)

    return {**_timed(run_once, job), "load_s": load_s, "threads": torch.get_num_threads(), **_rss()}


def ours_worker(job: dict) -> dict:
    from daemon.settings import Settings
    from pipeline.imageio import encode_image, load_image
    from pipeline.restorer import Restorer

    settings = Settings()
    options = settings.restore_options()
    began = time.perf_counter()
    restorer = Restorer(settings.engine_config())
    restorer.warm_up(options)
    load_s = time.perf_counter() - began
    reports = []

    def run_once() -> None:
        output, report = restorer.restore(load_image(Path(job["input"]).read_bytes()), options)
        Path(job["output"]).write_bytes(encode_image(output, "png"))
        reports.append(report)

    timing = _timed(run_once, job)
    report = reports[-1]
    engine = (
        f"{report.backend} {report.device} {report.precision}, tile {report.tile_size}, {report.tiles} tiles"
    )
    return {**timing, "load_s": load_s, "engine": engine, **_rss()}


def _timed(run_once: Callable[[], None], job: dict) -> dict:
    """Steady-state seconds of one file -> file run. Inputs up to 320x320 get an untimed first call on
    the same image (ours builds the primitives of a new input shape on first use; the reference's
    oneDNN primitives are created on first use), so both sides are measured warm. job["once"]: one call
    only (bench_upscale.py times the whole process from outside)."""
    first_s = None
    if job["pixels"] <= 320 * 320 and not job.get("once"):
        began = time.perf_counter()
        run_once()
        first_s = time.perf_counter() - began
    began = time.perf_counter()
    run_once()
    return {"seconds": time.perf_counter() - began, "first_call_s": first_s}


def _rss() -> dict:
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_worker(python: Path | str, kind: str, job: dict) -> dict:
    command = [str(python), str(Path(__file__).resolve()), "--worker", kind, json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"{kind} worker failed on {job['input']} (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1])


# --- orchestration --------------------------------------------------------------------------------------


def make_inputs(photos: list[str], sizes: list[tuple[int, int]], folder: Path) -> list[Path]:
    """Centre crops (resized to cover when the photo is smaller) of skimage's real photos, as PNG."""
    import skimage.data

    from pipeline.evaluation.metrics import as_rgb

    paths = []
    for name in photos:
        source = as_rgb(getattr(skimage.data, name)())
        for width, height in sizes:
            crop = _cover_crop(source, width, height)
            path = folder / f"{name}-{width}x{height}.png"
            _write_png(path, crop)
            paths.append(path)
    return paths


def _cover_crop(source: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    scale = max(width / source.shape[1], height / source.shape[0], 1.0)
    if scale > 1.0:
        size = (round(source.shape[1] * scale), round(source.shape[0] * scale))
        source = cv2.resize(source, size, interpolation=cv2.INTER_CUBIC)
    top, left = (source.shape[0] - height) // 2, (source.shape[1] - width) // 2
    return source[top : top + height, left : left + width]


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path)


def compare(ours: Path, ref: Path) -> tuple[float, int]:
    """PSNR (dB, all channels, 8-bit) and max abs difference of our output vs the reference's."""
    from PIL import Image

    from pipeline.evaluation.metrics import psnr

    a = np.asarray(Image.open(ours).convert("RGB"))
    b = np.asarray(Image.open(ref).convert("RGB"))
    return psnr(a, b), int(np.abs(a.astype(int) - b.astype(int)).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256x256", help="comma list of WxH crops (default 256x256)")
    parser.add_argument("--images", default="coffee,chelsea,astronaut", help=f"from {', '.join(PHOTOS)}")
    parser.add_argument("--ours-only", default="", help="WxH sizes to run with ours only (RSS checks)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "JOB"), help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        _import_reference()
        return 0
    if args.worker:
        kind, job = args.worker
        result = (ref_worker if kind == "ref" else ours_worker)(json.loads(job))
        print(json.dumps(result))
        return 0
    return orchestrate(args)


def orchestrate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.bench import cpu_peaks, flops_per_input_pixel, parse_sizes

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inputs").mkdir(exist_ok=True)
    ref_python = ensure_ref_venv(REF_VENV)
    weights = reference_weights(args.out)
    peaks = cpu_peaks()
    from daemon.settings import Settings

    settings = Settings()
    flops = flops_per_input_pixel("RealESRGAN_x4plus", settings.weights_dir, settings.cache_dir)
    photos = [p.strip() for p in args.images.split(",") if p.strip()]
    inputs = make_inputs(photos, parse_sizes(args.sizes), args.out / "inputs")
    rows = []
    load_before = os.getloadavg()
    for path in inputs:
        stem = path.stem
        jobs = {
            kind: {
                "input": str(path),
                "output": str(args.out / f"{stem}.{kind}.png"),
                "weights": str(weights),
                "pixels": _pixels(stem),
            }
            for kind in ("ours", "ref")
        }
        print(f"{stem}: ours ...", file=sys.stderr, flush=True)
        ours = run_worker(sys.executable, "ours", jobs["ours"])
        print(f"{stem}: reference ...", file=sys.stderr, flush=True)
        ref = run_worker(ref_python, "ref", jobs["ref"])
        db, max_diff = compare(Path(jobs["ours"]["output"]), Path(jobs["ref"]["output"]))
        rows.append({"input": stem, "ours": ours, "ref": ref, "psnr_vs_ref": db, "max_abs_diff": max_diff})
    ours_only = []
    for width, height in parse_sizes(args.ours_only) if args.ours_only else []:
        path = make_inputs(photos[:1], [(width, height)], args.out / "inputs")[0]
        job = {
            "input": str(path),
            "output": str(args.out / f"{path.stem}.ours.png"),
            "pixels": width * height,
        }
        print(f"{path.stem}: ours only ...", file=sys.stderr, flush=True)
        ours_only.append({"input": path.stem, "ours": run_worker(sys.executable, "ours", job)})
    load_after = os.getloadavg()

    report = render(rows, ours_only, peaks, flops, load_before, load_after)
    print(report)
    (args.out / "reference.md").write_text(report + "\n", encoding="utf-8")
    data = {"rows": rows, "ours_only": ours_only, "flops_per_input_pixel": flops, "peaks": peaks.__dict__}
    (args.out / "reference.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    return 0


def _first_calls(rows: list[dict]) -> list[str]:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    firsts = [(row["input"], row["ours"].get("first_call_s"), row["ref"].get("first_call_s")) for row in rows]
    return [f"{name} {seconds(ours)} / {seconds(ref)}" for name, ours, ref in firsts] or ["none"]


def _pixels(stem: str) -> int:
    width, height = stem.rsplit("-", 1)[1].split("x")
    return int(width) * int(height)


def render(
    rows: list[dict],
    ours_only: list[dict],
    peaks: CpuPeaks,
    flops: float,
    load_before: tuple,
    load_after: tuple,
) -> str:
    def size_of(stem: str) -> tuple[int, int]:
        width, height = stem.rsplit("-", 1)[1].split("x")
        return int(width), int(height)

    def rates(stem: str, seconds: float) -> tuple[str, str]:
        width, height = size_of(stem)
        gflops = flops * width * height / seconds / 1e9
        bf16 = f" / {100 * gflops / peaks.bf16_gflops:.0f}% bf16" if peaks.bf16_gflops else ""
        return (
            f"{width * height / 1e6 / seconds:.4f}",
            f"{gflops:.0f} ({100 * gflops / peaks.fp32_gflops:.0f}% fp32{bf16})",
        )

    header = [
        "input", "ours s", "reference s", "speed-up", "ours MP/s", "ref MP/s", "ours GFLOP/s (% of peak)",
        "ref GFLOP/s (% of peak)", "ours peak RSS MB", "ref peak RSS MB", "PSNR ours vs ref (max diff)",
    ]  # fmt: skip
    lines = [
        f"Machine: {peaks.description}; peaks fp32 {peaks.fp32_gflops:.0f} / bf16 "
        f"{peaks.bf16_gflops or 0:.0f} GFLOP/s ({peaks.formula}); RealESRGAN_x4plus "
        f"{flops / 1e6:.2f} MFLOP per input pixel. Load average before/after: "
        f"{load_before[0]:.2f}/{load_after[0]:.2f} (1 min).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        ours, ref = row["ours"], row["ref"]
        ours_mps, ours_gf = rates(row["input"], ours["seconds"])
        ref_mps, ref_gf = rates(row["input"], ref["seconds"])
        cells = [
            row["input"], f"{ours['seconds']:.2f}", f"{ref['seconds']:.2f}",
            f"{ref['seconds'] / ours['seconds']:.2f}x", ours_mps, ref_mps, ours_gf, ref_gf,
            f"{ours['peak_rss_mb']:.0f}", f"{ref['peak_rss_mb']:.0f}",
            f"{row['psnr_vs_ref']:.2f} dB ({row['max_abs_diff']}/255)",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for row in ours_only:
        ours = row["ours"]
        ours_mps, ours_gf = rates(row["input"], ours["seconds"])
        cells = [row["input"], f"{ours['seconds']:.2f}", "not run", "-", ours_mps, "-", ours_gf, "-",
                 f"{ours['peak_rss_mb']:.0f}", "-", "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    engines = sorted({row["ours"].get("engine", "") for row in rows + ours_only})
    lines += [
        "",
        f"Ours: Restorer at default settings ({'; '.join(engines)}), PNG file in -> PNG bytes out. "
        "Reference: realesrgan 0.3.0 RealESRGANer, fp32, tile=0, cv2.imread -> enhance -> cv2.imwrite. "
        "Seconds exclude model loading (ours: load + compile, reference: network construction + weights); "
        "inputs up to 320x320 are timed on a second call (first call, both sides: "
        + ", ".join(_first_calls(rows))
        + ").",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
