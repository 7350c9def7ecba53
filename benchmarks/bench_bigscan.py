"""Large scans in bounded memory (issue 20 item 3): peak RSS of one restore, disk assembly vs in memory.

    python benchmarks/bench_bigscan.py [--sizes 4000x3000,4961x7016,8165x12247] [--network standin]
        [--inputs jpg,gray-jpg,png16,tiff16] [--formats jpg] [--before] [--cgroup-mb 1536]
        [--state-dir DIR] [--out DIR]

Each row is a fresh process (benchmarks/bigscan_child.py: decode -> restore 4x without faces ->
encode -> publish, the worker's path) on a photo of that size (skimage's, covered and cropped), saved as
--inputs says: jpg (RGB, q92), gray-jpg (the photo's luma as RGB, q92: the gray colour path), png16 and
tiff16 (16-bit RGB, zlib; the 8-bit values x 257). Its peak RSS comes from wait4 (ru_maxrss: the whole
process, file-backed pages included).
--before adds the same run with the in-memory assembly forced (today's path before this change).
--cgroup-mb runs each process inside a child cgroup with that memory limit and reports whether it was
killed and the cgroup's own peak (page cache included), as tests/test_bigscan_cgroup.py does.

--network standin (default) is the nearest-neighbour stand-in network (pipeline/evaluation/standin.py),
so sizes of 35 and 100 MP finish in minutes on a small CPU; its memory differs from a real network's
only by one tile's activations, which do not grow with the image. --network realesr-animevideov3 (or
RealESRGAN_x4plus) runs the real one from --state-dir (converted weights, compiled networks).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_upscale import emit, load_average, machine, packaged_photo, parse_sizes  # noqa: E402

CHILD = ROOT / "benchmarks" / "bigscan_child.py"


INPUT_KINDS = ("jpg", "gray-jpg", "png16", "tiff16")


def write_input(folder: Path, kind: str, width: int, height: int) -> Path:
    """The bench photo of width x height saved as `kind` (INPUT_KINDS) in `folder`."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rgb = packaged_photo(width, height)
    name = f"scan-{width}x{height}-{kind}"
    if kind in ("jpg", "gray-jpg"):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if kind == "gray-jpg":
            bgr = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        return path
    wide = rgb.astype(np.uint16)
    wide *= 257
    if kind == "png16":
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(wide, cv2.COLOR_RGB2BGR))
        return path
    if kind == "tiff16":
        import tifffile

        path = folder / f"{name}.tif"
        tifffile.imwrite(path, wide, photometric="rgb", compression="zlib", rowsperstrip=64)
        return path
    raise SystemExit(f"--inputs: unknown kind {kind!r}; use {', '.join(INPUT_KINDS)}")


def run_child(command: list[str], cgroup: Path | None) -> dict[str, object]:
    if cgroup is not None:
        command = ["sh", "-c", f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"', "sh", *command]
    began = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=ROOT)
        assert child.stdout is not None
        out = child.stdout.read()  # drained while it runs; then wait4 for this child's own peak RSS
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        err = errors.read()
    wall = time.perf_counter() - began
    lines = out.decode().strip().splitlines()
    result = json.loads(lines[-1]) if child.returncode == 0 and lines else {}
    return {
        "returncode": child.returncode,
        "wall_s": round(wall, 1),
        # The child's own VmHWM: wait4's ru_maxrss also holds this parent's peak (Linux carries it into
        # the child through fork and exec), which after making a 200 MP input is gigabytes.
        "peak_rss": result.get("peak_rss") or usage.ru_maxrss * 1024,
        "ru_maxrss": usage.ru_maxrss * 1024,
        "notes": result.get("notes", []),
        "stage_peak_rss": result.get("stage_peak_rss", {}),
        "stderr": err.decode(errors="replace")[-400:],
        "output_bytes": Path(str(result["output"])).stat().st_size if result.get("output") else None,
    }


def make_cgroup(limit_mb: int) -> tuple[Path, int]:
    from tests.test_bigscan_cgroup import MemoryCgroup, own_memory_cgroup

    found = own_memory_cgroup()
    if isinstance(found, str):
        raise SystemExit(f"--cgroup-mb: {found}")
    parent, version = found
    path = parent / f"restorer-bench-bigscan-{os.getpid()}"
    path.mkdir()
    MemoryCgroup(path, version).set_limit(limit_mb * 1024 * 1024)
    return path, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("4000x3000,4961x7016,8165x12247"))
    parser.add_argument("--network", default="standin")
    parser.add_argument("--inputs", default="jpg", help=f"comma-separated, of {', '.join(INPUT_KINDS)}")
    parser.add_argument("--formats", default="jpg")
    parser.add_argument("--before", action="store_true", help="also force the in-memory assembly")
    parser.add_argument("--cgroup-mb", type=int, default=None)
    parser.add_argument("--state-dir", default=str(ROOT / "var" / "bench-state"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bigscan"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-bigscan-"))
    rows, data = [], []
    for (width, height), kind in itertools.product(args.sizes, args.inputs.split(",")):
        source = write_input(work / "inputs", kind, width, height)
        for fmt in args.formats.split(","):
            for variant in ["chosen", "in memory forced"] if args.before else ["chosen"]:
                cgroup = make_cgroup(args.cgroup_mb) if args.cgroup_mb else None
                command = [sys.executable, str(CHILD), str(source), str(work / "out"), str(work / "scratch")]
                command += ["--network", args.network, "--format", fmt, "--state-dir", args.state_dir]
                command += ["--in-memory"] if variant == "in memory forced" else []
                load = load_average()
                try:
                    result = run_child(command, cgroup[0] if cgroup else None)
                    if cgroup is not None:
                        from tests.test_bigscan_cgroup import MemoryCgroup

                        group = MemoryCgroup(*cgroup)
                        result["oom_kills"], result["cgroup_peak"] = group.oom_kills(), group.peak_bytes()
                finally:
                    if cgroup is not None:
                        cgroup[0].rmdir()
                entry = {
                    "input": f"{width}x{height}",
                    "input_kind": kind,
                    "format": fmt,
                    "variant": variant,
                    "load": load,
                    **result,
                }
                print(json.dumps(entry), file=sys.stderr, flush=True)
                data.append(entry)
                rows.append(_row(entry, width, height))
        source.unlink()
    header = [
        "input",
        "kind",
        "output",
        "format",
        "run",
        "decoded to",
        "assembled in",
        "peak RSS MB",
        "exit",
        "cgroup peak MB / OOM kills",
        "wall s",
        "file MB",
        "load avg",
    ]
    notes = [
        f"Machine: {machine()}. Network: {args.network}. Each row a fresh process: decode JPEG -> restore "
        "4x, no faces -> encode -> publish (benchmarks/bigscan_child.py); peak RSS from wait4 (ru_maxrss)."
        + (f" Inside a cgroup limited to {args.cgroup_mb} MB." if args.cgroup_mb else ""),
    ]
    emit(Path(args.out), f"bigscan-{args.network}", header, rows, notes, data)
    return 0


def _row(entry: dict[str, object], width: int, height: int) -> list[str]:
    peak = entry["peak_rss"]
    cgroup = "-"
    if "oom_kills" in entry:
        cgroup_peak = entry["cgroup_peak"]
        cgroup = (
            f"{int(cgroup_peak) / 2**20:.0f} / {entry['oom_kills']}"
            if cgroup_peak
            else f"- / {entry['oom_kills']}"
        )
    size = entry["output_bytes"]
    return [
        f"{width}x{height} ({width * height / 1e6:.0f} MP)",
        str(entry["input_kind"]),
        f"{width * 4}x{height * 4} ({width * height * 16 / 1e6:.0f} MP)",
        str(entry["format"]),
        str(entry["variant"]),
        "disk" if any("decoded into the scratch" in str(note) for note in entry["notes"]) else "memory",
        "disk" if any("assembled on disk" in str(note) for note in entry["notes"]) else "memory",
        f"{int(peak) / 2**20:.0f}" if peak else "-",
        str(entry["returncode"]),
        cgroup,
        str(entry["wall_s"]),
        f"{int(size) / 1e6:.0f}" if size else "-",
        str(entry["load"]),
    ]


if __name__ == "__main__":
    sys.exit(main())
