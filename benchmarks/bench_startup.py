"""Fixed cost of one `restorer restore` process and its peak memory, from a warm cache.

Fixed cost: from launching the process to the moment the first super-resolution tile starts computing
(interpreter start, imports, settings, finding the weights, decoding the photo, faces detected, and the
networks loaded from OpenVINO's cache, ready to run). The command is the real `restorer restore`
(app.cli.main); this harness only notes the wall clock when the OpenVINO upscaler asks for its first
inference request (its parts were compiled, or their blobs loaded, when it was made). Peak RSS comes
from the kernel (the finished child's ru_maxrss from wait4, what /usr/bin/time -v reports as "Maximum
resident set size").

    python benchmarks/bench_startup.py --state-dir DIR [--runs 5] [--size 64x64] [--no-face] [--model ID]

Prints one JSON line per run and the medians. The first run (which may convert and compile) is a warm-up
and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs inside the measured process: the real command, plus one line noting when the first tile starts.
CHILD = r"""
import sys, time
import pipeline.backends.openvino_backend as backend
first_tile = []
request = backend.OpenVinoUpscaler._request
def noting(self, part):
    compiled = request(self, part)  # the first tile's; every part was compiled when the upscaler was made
    if not first_tile:
        first_tile.append(time.time())
        print("FIRST_TILE", first_tile[0], file=sys.stderr, flush=True)
    return compiled
backend.OpenVinoUpscaler._request = noting
from app.cli import main
code = main(sys.argv[1:])
print("TORCH_LOADED", "torch" in sys.modules, file=sys.stderr, flush=True)
sys.exit(code)
"""


def photo(path: Path, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image
    from skimage import data

    source = Image.fromarray(data.astronaut())
    tiles = np.asarray(source.resize((max(width, 512), max(height, 512))))[:height, :width]
    Image.fromarray(np.ascontiguousarray(tiles)).save(path, quality=92)


def run_once(args: argparse.Namespace, image: Path, out: Path) -> dict[str, float | bool]:
    command = [sys.executable, "-c", CHILD, "restore", str(image), "-o", str(out)]
    command += ["--state-dir", str(args.state_dir), "--weights-dir", str(args.weights_dir)]
    command += ["--model", args.model] + (["--no-face"] if args.no_face else [])
    with tempfile.TemporaryFile("w+") as errors:
        launched = time.time()
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=os.environ.copy())
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (ru_maxrss: its peak RSS)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        lines = errors.read().splitlines()
    if child.returncode != 0:
        raise SystemExit("\n".join(lines[-20:]))
    first = next(float(line.split()[1]) for line in lines if line.startswith("FIRST_TILE"))
    return {
        "fixed_s": round(first - launched, 3),
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),  # the whole process, less sensitive to load
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # KiB on Linux
        "torch_imported": "TORCH_LOADED True" in lines,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--model", default="RealESRGAN_x4plus")
    parser.add_argument("--no-face", action="store_true")
    args = parser.parse_args()
    args.weights_dir = args.weights_dir or args.state_dir / "weights"
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "photo.jpg"
        photo(image, width, height)
        run_once(args, image, Path(folder) / "warm")  # converts / compiles if needed: not counted
        runs = [run_once(args, image, Path(folder) / f"out{i}") for i in range(args.runs)]
    for run in runs:
        print(json.dumps(run))
    fixed = statistics.median(float(run["fixed_s"]) for run in runs)
    wall = statistics.median(float(run["wall_s"]) for run in runs)
    cpu = statistics.median(float(run["cpu_s"]) for run in runs)
    medians = {"median_fixed_s": fixed, "median_wall_s": wall, "median_cpu_s": cpu}
    print(json.dumps({**medians, "load_average": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
