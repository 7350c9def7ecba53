"""benchmarks/gpu_check.sh, the first run on any GPU machine, checked on the CPU with --dry-run: every step
runs (torch fp32 on the CPU, toy sizes) and the JSON and Markdown summaries are written, so the first
minutes on a GPU are not spent on the script's own bugs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline.weights import embedded_models_dir

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(embedded_models_dir() is None, reason="embedded Real-ESRGAN weights not installed"),
]


def test_the_dry_run_runs_every_step_and_writes_both_summaries(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "OUT"}
    done = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=480, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    statuses = {step["name"]: step["status"] for step in summary["steps"]}
    # No GPU here: the CUDA-marked tests are collected and all skipped; the rest really ran on the CPU.
    assert statuses == {"machine": "passed", "cuda tests": "skipped", "bench": "passed", "faces": "passed"}
    bench = next(step for step in summary["steps"] if step["name"] == "bench")
    assert bench["detail"]["gemm"]["device"] == "cpu" and bench["detail"]["gemm"]["gflops"] > 0
    assert [(row["stage"], row["size"]) for row in bench["detail"]["rows"]] == [
        ("sr", "64x48"),
        ("pipeline", "64x48"),
    ]
    assert all(row["efficiency"] > 0 for row in bench["detail"]["rows"])
    faces = next(step for step in summary["steps"] if step["name"] == "faces")
    assert faces["detail"]["faces_restored"] == 1
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert "dry run on the CPU" in markdown and "| bench | passed |" in markdown
