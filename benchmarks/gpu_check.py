"""The first run on a machine with an NVIDIA GPU, in at most 8 minutes (benchmarks/gpu_check.sh sets up the
environment and calls this). Each step has its own time limit and its outcome is recorded whatever
happens, so one short lease always brings back a complete summary:

1. machine     the GPUs (nvidia-smi and torch), torch's CUDA build, bf16 support
2. cuda tests  pytest -m cuda: torch CUDA fp16/bf16 vs fp32 on the CPU, faces on the GPU, a worker per GPU
3. bench       `restorer bench` on the seed's 546x729 photo and a 2.5 MP photo, efficiency against the
               GPU's own fp16/bf16 GEMM rate measured in the same run
4. faces       `restorer restore` of a face photo with a randomly initialised official-shape GFPGAN

Writes gpu-check.json and gpu-check.md (plus the bench's and the tests' own files) into the output folder.
--dry-run runs the same steps on the CPU at toy sizes (torch fp32, so nothing is compiled): it checks the
script, not the GPU, and is what `make test` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOTAL_BUDGET_S = 480  # the 8 minutes, start-up of the steps included
SEED_SIZE = "546x729"  # the seed README's photo
LARGE_SIZE = "1824x1368"  # 2.5 MP


@dataclass
class Step:
    name: str
    status: str = "not run"  # passed | failed | skipped | timed out | not run
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""


@dataclass(frozen=True)
class Plan:
    out: Path
    work: Path
    dry_run: bool

    @property
    def engine_flags(self) -> list[str]:
        """The dry run: torch fp32 on the CPU (nothing is compiled) and the cheapest model. On a GPU: what
        `auto` picks there (torch, CUDA, fp16), with the default model."""
        if self.dry_run:
            return ["--backend", "torch", "--precision", "fp32", "--model", "realesr-animevideov3"]
        return []

    @property
    def bench_sizes(self) -> str:
        return "64x48" if self.dry_run else f"{SEED_SIZE},{LARGE_SIZE}"

    @property
    def environment(self) -> dict[str, str]:
        """Every command's state and weights live in the temporary work folder."""
        return {
            "RESTORER_STATE_DIR": str(self.work / "state"),
            "RESTORER_WEIGHTS_DIR": str(self.work / "weights"),
        }


def run_step(
    step: Step, command: list[str], timeout_s: float, log: Path, plan: Plan
) -> subprocess.CompletedProcess | None:
    """Run one command with a limit; its whole output goes to `log`, its last lines into the step."""
    began = time.monotonic()
    env = {**os.environ, **plan.environment, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout_s, 1), check=False
        )
    except subprocess.TimeoutExpired as expired:
        step.status = "timed out"
        output = _text(expired.stdout) + _text(expired.stderr)  # what it printed before it was stopped
        log.write_text(output)
        step.log_tail = output[-2000:]
        return None
    finally:
        step.seconds = round(time.monotonic() - began, 1)
    log.write_text(done.stdout + done.stderr)
    step.log_tail = (done.stdout + done.stderr)[-2000:]
    step.status = "passed" if done.returncode == 0 else "failed"
    return done


def _text(captured: str | bytes | None) -> str:
    return captured.decode(errors="replace") if isinstance(captured, bytes) else captured or ""


def machine_step(plan: Plan) -> Step:
    step = Step("machine")
    probe = (
        "import json, torch\n"
        "gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda_build': torch.version.cuda, 'gpus': gpus,\n"
        "  'bf16': bool(gpus) and torch.cuda.is_bf16_supported()}))\n"
    )
    done = run_step(step, [sys.executable, "-c", probe], 60, plan.out / "machine.log", plan)
    if done is not None and done.returncode == 0:
        step.detail = json.loads(done.stdout.strip().splitlines()[-1])
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        result = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        step.detail["nvidia_smi"] = result.stdout.strip().splitlines()
    if not step.detail.get("gpus") and not plan.dry_run:
        step.status = "failed"
        step.detail["reason"] = "torch sees no CUDA GPU"
    return step


def cuda_tests_step(plan: Plan, timeout_s: float) -> Step:
    step = Step("cuda tests")
    junit = plan.out / "cuda-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rs",
               "-p", "no:cacheprovider", f"--junitxml={junit}",
               f"--basetemp={plan.work / 'pytest'}"]  # fmt: skip
    done = run_step(step, command, timeout_s, plan.out / "cuda-tests.log", plan)
    if done is not None:
        summary = [
            line
            for line in done.stdout.splitlines()
            if " in " in line and ("passed" in line or "skipped" in line or "failed" in line)
        ]
        step.detail["summary"] = summary[-1].strip("= ") if summary else ""
        skipped_everything = "passed" not in step.detail["summary"] and "failed" not in step.detail["summary"]
        if done.returncode == 0 and skipped_everything:
            step.status = "skipped"
    return step


def bench_step(plan: Plan, timeout_s: float) -> Step:
    step = Step("bench")
    folder = plan.out / "bench"
    command = [sys.executable, "-m", "app.cli", "bench", "--sizes", plan.bench_sizes,
               "--stages", "sr,pipeline", "--out", str(folder), *plan.engine_flags,
               *(["--gemm-size", "1024"] if plan.dry_run else [])]  # fmt: skip
    run_step(step, command, timeout_s, plan.out / "bench.log", plan)
    report = folder / "bench.json"
    if report.is_file():
        data = json.loads(report.read_text())
        gemm = data["gemm"]
        rows = []
        for m in data["measurements"]:
            spec = m["spec"]
            row = {"stage": spec["stage"], "size": f"{spec['width']}x{spec['height']}", "error": m["error"]}
            if m["error"] is None:
                seconds = m["median_s"]
                useful = data["flops_per_input_pixel"] * spec["width"] * spec["height"] / seconds / 1e9
                row.update(
                    seconds=round(seconds, 3),
                    gflops=round(useful),
                    engine=f"{m['backend']} {m['device']} {m['precision']}",
                )
                row["efficiency"] = None if m["efficiency"] is None else round(m["efficiency"], 3)
                row["peak_rss_mb"] = round(m["peak_rss_mb"])
            rows.append(row)
        step.detail = {"gemm": gemm, "gemm_before_after": data["gemm_before_after"], "rows": rows}
    return step


def faces_step(plan: Plan, timeout_s: float) -> Step:
    step = Step("faces")
    weights, photos, restored = (
        plan.environment["RESTORER_WEIGHTS_DIR"],
        plan.work / "faces-in",
        plan.work / "faces-out",
    )
    photos.mkdir(parents=True, exist_ok=True)
    maker = (
        "import sys, skimage, cv2\nfrom pathlib import Path\n"
        "from tests.faces_support import write_random_gfpgan\n"
        "write_random_gfpgan(Path(sys.argv[1]))\n"
        "face = skimage.data.astronaut()[0:300, 80:380][:, :, ::-1]\n"
        f"face = cv2.resize(face, {(96, 96) if plan.dry_run else (300, 300)}, interpolation=cv2.INTER_AREA)\n"
        "cv2.imwrite(str(Path(sys.argv[2]) / 'astronaut.png'), face)\n"
    )
    setup = [sys.executable, "-c", maker, str(weights), str(photos)]
    made = run_step(step, setup, 120, plan.out / "faces-setup.log", plan)
    if made is None or made.returncode != 0:
        return step
    report = plan.out / "faces-report.json"
    command = [sys.executable, "-m", "app.cli", "restore", str(photos), "-o", str(restored), "--faces",
               "--report", str(report), *plan.engine_flags]  # fmt: skip
    run_step(step, command, timeout_s, plan.out / "faces.log", plan)
    if report.is_file():
        rows = json.loads(report.read_text())
        rows = rows.get("files", rows) if isinstance(rows, dict) else rows
        step.detail["report"] = rows
        faces = [face for row in rows for face in (row.get("faces") or [])]
        step.detail["faces_restored"] = sum(1 for face in faces if face.get("restored"))
        step.detail["devices"] = sorted({str(row.get("device")) for row in rows})
        if step.status == "passed" and step.detail["faces_restored"] < 1:
            step.status = "failed"
            step.detail["reason"] = "no face was restored"
        elif step.status == "passed" and not plan.dry_run and step.detail["devices"] != ["cuda"]:
            step.status = "failed"
            step.detail["reason"] = f"ran on {step.detail['devices']}, not on the GPU"
    return step


def guarded(name: str, step: Callable[[], Step]) -> Step:
    """A step whose own code broke is a failed step with its traceback: the summary is always written."""
    try:
        return step()
    except Exception:  # whatever broke, the other steps and the summary still run
        return Step(name, status="failed", log_tail=traceback.format_exc())


def markdown(plan: Plan, steps: list[Step], total_s: float) -> str:
    lines = [
        "# GPU check" + (" (dry run on the CPU: checks the script, not a GPU)" if plan.dry_run else ""),
        "",
        f"Total {total_s:.0f} s (budget {TOTAL_BUDGET_S} s).",
        "",
        "| step | status | seconds | detail |",
        "|---|---|---:|---|",
    ]
    for step in steps:
        brief = {k: v for k, v in step.detail.items() if k not in ("rows", "report")}
        lines.append(f"| {step.name} | {step.status} | {step.seconds:.1f} | {json.dumps(brief)[:300]} |")
    bench = next((s for s in steps if s.name == "bench" and s.detail.get("rows")), None)
    if bench is not None:
        gemm = bench.detail["gemm"]
        lines += [
            "",
            f"Yardstick: {gemm['dtype']} GEMM {gemm['gflops']:.0f} GFLOP/s on {gemm['device']}.",
            "",
        ]
        lines += [
            "| stage | input | s/image | GFLOP/s | efficiency | engine | peak RSS MB |",
            "|---|---|---:|---:|---:|---|---:|",
        ]
        for row in bench.detail["rows"]:
            if row["error"]:
                lines.append(f"| {row['stage']} | {row['size']} | failed: {row['error']} | | | | |")
                continue
            efficiency = "-" if row["efficiency"] is None else f"{row['efficiency']:.2f}"
            cells = [row["stage"], row["size"], f"{row['seconds']:.3f}", str(row["gflops"]), efficiency]
            lines.append("| " + " | ".join([*cells, row["engine"], str(row["peak_rss_mb"])]) + " |")
    failing = [step for step in steps if step.status in ("failed", "timed out")]
    for step in failing:
        lines += ["", f"## {step.name}: {step.status}", "", "```", step.log_tail.strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out",
        nargs="?",
        type=Path,
        default=None,
        help="output folder (default: $OUT, else benchmarks/out/gpu-check)",
    )
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "out" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        plan = Plan(out=out.resolve(), work=Path(work), dry_run=args.dry_run)

        def left(share: float) -> float:
            return min(share, TOTAL_BUDGET_S - (time.monotonic() - began) - 10)

        steps = [
            guarded("machine", lambda: machine_step(plan)),
            guarded("cuda tests", lambda: cuda_tests_step(plan, left(170))),
            guarded("bench", lambda: bench_step(plan, left(200))),
            guarded("faces", lambda: faces_step(plan, left(90))),
        ]
    total = time.monotonic() - began
    summary = {"dry_run": plan.dry_run, "total_s": round(total, 1), "steps": [asdict(s) for s in steps]}
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(markdown(plan, steps, total))
    print(markdown(plan, steps, total))
    return 0 if all(step.status in ("passed", "skipped") for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
