"""systemd's ProcSubset=pid (the unit's /proc shows processes only, no meminfo or cpuinfo): real
`restorer restore` and `restorer serve` runs inside a PID and mount namespace whose /proc is mounted
with subset=pid, as systemd mounts it, and the host facts the backends choose by are the same as outside."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from daemon.store import Job, JobStore
from tests.support.paths import REPO, RESTORER
from tests.support.serve import ServeProcess
from tests.support.waiting import wait_for

# The namespace's own /proc, then remounted processes-only; the command runs only if meminfo is gone.
PID_ONLY = 'mount -o remount,subset=pid /proc && test ! -e /proc/meminfo && exec "$@"'
PREFIX = ("unshare", "--fork", "--pid", "--mount", "--mount-proc", "--kill-child", "sh", "-c", PID_ONLY, "sh")
FAST = ["--model", "realesr-animevideov3", "--no-face"]
FACTS = (
    "import json; from pipeline.backends.base import available_cores, available_ram_bytes, cpu_bf16_flag, "
    "cpu_flags; print(json.dumps([available_ram_bytes(), cpu_bf16_flag(cpu_flags()), available_cores()]))"
)


@pytest.fixture(scope="module")
def pid_only_proc() -> tuple[str, ...]:
    """The command prefix; skips where namespaces or the subset=pid mount are not permitted."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run([*PREFIX, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount /proc with subset=pid here (needs root, Linux >= 5.8): {probe.stderr}")
    return PREFIX


@pytest.fixture(scope="module")
def model_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state dir for the module: the embedded network is converted once (its cache is copied)."""
    return tmp_path_factory.mktemp("proc-subset-state")


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def done_jobs(root: Path) -> list[Job]:
    store = JobStore(root / "state" / "jobs.sqlite3")
    try:
        return store.list(state="done", limit=10).jobs
    finally:
        store.close()


def test_the_host_facts_are_the_same_without_meminfo_and_cpuinfo(pid_only_proc: tuple[str, ...]) -> None:
    outside = run([sys.executable, "-c", FACTS])
    inside = run([*pid_only_proc, sys.executable, "-c", FACTS])
    assert outside.returncode == 0 and inside.returncode == 0, outside.stderr + inside.stderr
    ram_outside, bf16_outside, cores_outside = json.loads(outside.stdout)
    ram_inside, bf16_inside, cores_inside = json.loads(inside.stdout)
    assert (bf16_inside, cores_inside) == (bf16_outside, cores_outside)
    # sysinfo's free RAM counts no page cache (MemAvailable does): lower, but measured, not the guess.
    assert ram_inside != 2 << 30 and 0 < ram_inside <= ram_outside * 1.5


@pytest.mark.slow
def test_restorer_restore_works_with_processes_only_in_proc(
    pid_only_proc: tuple[str, ...], tmp_path: Path, model_state: Path
) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(tmp_path / "photo.png")
    state = model_state
    command = [str(RESTORER), "restore", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), *FAST]
    command += ["--state-dir", str(state), "--weights-dir", str(state / "weights")]
    command += ["--report", str(tmp_path / "report.json")]
    result = run([*pid_only_proc, *command])
    assert result.returncode == 0, result.stdout + result.stderr
    with PILImage.open(tmp_path / "out" / "photo.png") as written:
        assert written.size == (64, 64)
    report = json.loads((tmp_path / "report.json").read_text())
    assert "openvino" in json.dumps(report)


@pytest.mark.slow
def test_restorer_serve_restores_a_photo_with_processes_only_in_proc(
    pid_only_proc: tuple[str, ...], root: Path, serves: list[ServeProcess], model_state: Path
) -> None:
    if (model_state / "cache").is_dir():
        shutil.copytree(model_state / "cache", root / "state" / "cache")
    env = {"RESTORER_MODEL": "realesr-animevideov3", "RESTORER_FACES": "false"}
    serve = ServeProcess(root, env, processor=None, prefix=pid_only_proc)  # the real pipeline
    serves.append(serve)
    serve.wait_ready(timeout=240)
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(root / "inbox" / "photo.png")
    job = wait_for(lambda: (jobs := done_jobs(root)) and jobs[0], timeout=120)
    assert job.attempts == 1 and job.report["backend"] == "openvino"
    with PILImage.open(root / "outbox" / "photo.png") as written:
        assert written.size == (64, 64)
    health = serve.health()
    assert health["status"] == "ok" and [w["device"] for w in health["workers"]] == ["cpu"]
