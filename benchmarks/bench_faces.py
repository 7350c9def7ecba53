"""Face restoration speed on this machine: seconds per 512x512 face for each backend/precision, and the
whole pipeline on a photo with four faces.

Network: a randomly initialised GFPGAN of the official v1.3/v1.4 shape (86 M parameters, trained-like
noise strengths), saved as {'params_ema': ...} and loaded through pipeline.weights exactly like a user's
GFPGANv1.4.pth; pass --weights to time a real file instead. The face is skimage's astronaut, detected and
aligned by the pipeline itself. Speed does not depend on the weights' values; the PSNR column (vs torch
fp32 on the same face) is what decides FACE_CPU_AUTO in pipeline/faces/restore.py (>= 40 dB required).

Engines are timed round-robin (run 1 of each, then run 2 of each, ...) so machine load hits all alike.
OpenVINO's one-off conversion (kept as IR in the cache folder) and compile are reported separately.

    .venv/bin/python benchmarks/bench_faces.py                 # both parts, 3 runs
    .venv/bin/python benchmarks/bench_faces.py --runs 5 --skip-pipeline
    .venv/bin/python benchmarks/bench_faces.py --weights weights/GFPGANv1.4.pth
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "out" / "faces"
ENGINES = [("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def weights_folder(weights: Path | None) -> Path:
    from tests.faces_support import write_random_gfpgan

    folder = OUT / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "GFPGANv1.4.pth"
    if weights is not None:
        shutil.copyfile(weights, target)
    elif not target.exists():
        write_random_gfpgan(folder)
    return folder


def astronaut_crop() -> np.ndarray:
    import skimage.data

    from pipeline.faces.align import align_face, similarity_to_template
    from pipeline.faces.detect import MtcnnDetector, detect_faces

    rgb = skimage.data.astronaut().astype(np.float32) / 255.0
    (face,) = detect_faces(MtcnnDetector(), rgb)
    return align_face(rgb, similarity_to_template(face.landmarks))


def bench_engines(weights_dir: Path, runs: int) -> list[dict[str, object]]:
    from pipeline.faces.restore import load_face_restorer
    from pipeline.types import EngineConfig

    crop = astronaut_crop()
    restorers, rows = {}, {}
    for backend, precision in ENGINES:
        engine = EngineConfig(
            weights_dir=str(weights_dir), cache_dir=str(OUT / "cache"), backend=backend, precision=precision
        )
        started = time.perf_counter()
        restorers[(backend, precision)] = load_face_restorer("GFPGANv1.4", engine)
        load = time.perf_counter() - started
        rows[(backend, precision)] = {"engine": f"{backend} {precision}", "load_s": round(load, 1)}
        rows[(backend, precision)]["runs"] = []
        print(f"loaded {backend} {precision} in {load:.1f} s", flush=True)
    outputs = {}
    for run in range(runs):
        for key, restorer in restorers.items():
            started = time.perf_counter()
            outputs[key] = restorer(crop)
            rows[key]["runs"].append(round(time.perf_counter() - started, 2))
            print(f"run {run + 1}: {key[0]} {key[1]} {rows[key]['runs'][-1]:.2f} s", flush=True)
    reference = outputs[("torch", "fp32")]
    for key, row in rows.items():
        row["median_s"] = statistics.median(row["runs"])
        row["psnr_vs_fp32_db"] = round(psnr(outputs[key], reference), 1)
        row["max_abs_diff_255"] = round(float(np.abs(outputs[key] - reference).max()) * 255, 1)
    return list(rows.values())


def four_face_photo() -> np.ndarray:
    """2x2 tiles of real faces (astronaut, cameraman, Grace Hopper, astronaut mirrored), 400x440 RGB."""
    import cv2
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle, Image.open(handle) as image:
        hopper = np.asarray(image.convert("RGB"))
    astronaut = skimage.data.astronaut()[20:240, 130:330]
    camera = np.repeat(skimage.data.camera()[80:300, 130:330, None], 3, axis=2)
    hopper = cv2.resize(hopper[60:400, 110:420], (200, 220), interpolation=cv2.INTER_AREA)
    return np.vstack([np.hstack([astronaut, camera]), np.hstack([hopper, astronaut[:, ::-1]])])


def bench_pipeline(weights_dir: Path, runs: int) -> list[dict[str, object]]:
    from pipeline.options import RestoreOptions
    from pipeline.restorer import Restorer
    from pipeline.types import EngineConfig, Image

    image = Image(pixels=four_face_photo(), original_mode="RGB")
    restorer = Restorer(EngineConfig(weights_dir=str(weights_dir), cache_dir=str(OUT / "cache")))
    with_faces, without = RestoreOptions(), RestoreOptions(faces=False)
    started = time.perf_counter()
    restorer.warm_up(with_faces)
    print(f"pipeline warm-up (load, convert, compile) {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for run in range(runs):
        for label, options in (("faces on", with_faces), ("faces off", without)):
            started = time.perf_counter()
            _, report = restorer.restore(image, options)
            seconds = time.perf_counter() - started
            row = {
                "run": run + 1,
                "options": label,
                "seconds": round(seconds, 2),
                "stages": report.stage_seconds,
                "faces_restored": sum(f.restored for f in report.faces),
                "faces_found": len(report.faces),
                "sr": f"{report.backend} {report.precision}",
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--weights", type=Path, help="a real GFPGANv1.4.pth to time instead of random init")
    parser.add_argument("--skip-engines", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()

    import torch

    from pipeline.backends.base import available_cores

    torch.set_num_threads(available_cores())
    weights_dir = weights_folder(args.weights)
    results: dict[str, object] = {"cores": available_cores(), "weights": str(args.weights or "random init")}
    if not args.skip_engines:
        results["engines"] = bench_engines(weights_dir, args.runs)
        print("\n| engine | s / face (median) | runs | load s | PSNR vs fp32 | max diff /255 |")
        print("|---|---:|---|---:|---:|---:|")
        for row in results["engines"]:
            print(
                f"| {row['engine']} | {row['median_s']:.2f} | {row['runs']} | {row['load_s']} "
                f"| {row['psnr_vs_fp32_db']} dB | {row['max_abs_diff_255']} |"
            )
    if not args.skip_pipeline:
        results["pipeline"] = bench_pipeline(weights_dir, max(1, args.runs - 1))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nwritten {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
