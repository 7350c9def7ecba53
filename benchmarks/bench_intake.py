"""Daemon intake benchmarks (docs/performance.md, "## Daemon").

1. Latency from a file becoming stable (last write + stability_seconds) to its job being recorded,
   native and polling mode, measured in-process on the real Intake + JobStore.
2. The 1,000-file burst: intake alone (all rows recorded), and end to end through `restorer serve`
   with the cheap test processor (all outputs published, originals archived).
3. Daemon CPU while idle (service + worker processes, from /proc) with 10,000 files in the archive and
   10,000 done jobs in the DB, production intervals (poll 5 s, heartbeat 5 s, rescan 300 s).

Run: .venv/bin/python benchmarks/bench_intake.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.health import HealthState  # noqa: E402
from daemon.intake import Intake  # noqa: E402
from daemon.settings import Settings  # noqa: E402
from daemon.store import AddResult, JobStore  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402
from tests.support.settings import make_folders, make_settings  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _intake(root: Path, mode: str, stability: float, poll: float) -> tuple[Settings, JobStore, Intake, dict]:
    settings = make_settings(root, watch_mode=mode, stability_seconds=stability, poll_seconds=poll)
    store = JobStore(settings.db_path)
    recorded: dict[str, float] = {}

    def on_job(result: AddResult) -> None:
        recorded[result.job.input_path] = time.monotonic()

    intake = Intake(settings, store, HealthState(), on_job=on_job)
    intake.start()
    return settings, store, intake, recorded


def stable_to_recorded(mode: str, files: int, stability: float, poll: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings, store, intake, recorded = _intake(Path(tmp), mode, stability, poll)
        latencies = []
        for n in range(files):
            name = f"photo{n}.jpg"
            (Path(settings.inbox) / name).write_bytes(os.urandom(200_000))
            stable_at = time.monotonic() + stability
            wait_for(lambda name=name: name in recorded, timeout=30, interval=0.002)
            latencies.append(recorded[name] - stable_at)
        intake.stop()
        store.close()
    latencies.sort()
    return {
        "median_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


def burst_intake(mode: str, files: int, stability: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings, store, intake, recorded = _intake(Path(tmp), mode, stability, 1.0)
        inbox = Path(settings.inbox)
        began = time.monotonic()
        for n in range(files):
            folder = inbox / f"roll{n % 10}"
            folder.mkdir(exist_ok=True)
            (folder / f"img{n:05d}.jpg").write_bytes(f"burst {n}".encode() * 100)
        written = time.monotonic()
        wait_for(lambda: len(recorded) == files, timeout=300, interval=0.01)
        done = time.monotonic()
        rows = store.counts()["queued"]
        intake.stop()
        store.close()
    assert rows == files, (rows, files)
    return {
        "files": files,
        "write_s": round(written - began, 2),
        "all_recorded_s": round(done - began, 2),
        "after_stability_s": round(done - written - stability, 2),
        "files_per_s_after_stability": round(files / max(done - written - stability, 1e-6)),
    }


def burst_end_to_end(files: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folders(root)
        serve = ServeProcess(root)
        try:
            serve.wait_ready()
            began = time.monotonic()
            for n in range(files):
                folder = root / "inbox" / f"roll{n % 10}"
                folder.mkdir(exist_ok=True)
                (folder / f"img{n:05d}.jpg").write_bytes(f"burst {n}".encode() * 100)
            store = JobStore(root / "state" / "jobs.sqlite3")
            wait_for(lambda: store.counts()["done"] == files, timeout=600, interval=0.25)
            elapsed = time.monotonic() - began
            store.close()
            outputs = sum(1 for p in (root / "outbox").rglob("*") if p.is_file())
        finally:
            serve.cleanup()
    return {
        "files": files,
        "seconds": round(elapsed, 1),
        "jobs_per_s": round(files / elapsed, 1),
        "outputs": outputs,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(c) for c in children)
    return found


def _fill_archive_and_db(root: Path, files: int) -> None:
    archive = root / "archive"
    now = "2026-01-01T00:00:00.000000+00:00"
    rows = []
    for n in range(files):
        folder = archive / f"{n // 1000:02d}"
        folder.mkdir(exist_ok=True)
        data = f"archived photo {n}".encode()
        (folder / f"p{n:05d}.jpg").write_bytes(data)
        rel = f"{n // 1000:02d}/p{n:05d}.jpg"
        rows.append(
            (
                rel,
                hashlib.sha256(data).hexdigest(),
                len(data),
                1.0,
                "done",
                now,
                now,
                now,
                rel,
                "archived",
                rel,
            )
        )
    JobStore(root / "state" / "jobs.sqlite3").close()  # schema
    with sqlite3.connect(root / "state" / "jobs.sqlite3") as conn:
        conn.executemany(
            "INSERT INTO jobs (input_path, content_sha256, size_bytes, mtime, state, detected_at, "
            "started_at, finished_at, output_path, original, original_path) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )


def idle_cpu(mode: str, files: int, seconds: float, keep_in_inbox: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folders(root)
        if keep_in_inbox:
            for n in range(files):
                folder = root / "inbox" / f"{n // 1000:02d}"
                folder.mkdir(exist_ok=True)
                (folder / f"k{n:05d}.jpg").write_bytes(f"kept {n}".encode())
        else:
            _fill_archive_and_db(root, files)
        production = {  # the production intervals; no free-space floor (the test disk may be small)
            "watch_mode": mode,
            "stability_seconds": 1.0,
            "originals": "keep" if keep_in_inbox else "archive",
            "min_free_mb": 0,
        }
        serve = ServeProcess(root, settings=production, quick=False)
        try:
            serve.wait_ready(timeout=120)
            if keep_in_inbox:  # let the kept files be recorded once, then measure the steady state
                store = JobStore(root / "state" / "jobs.sqlite3")
                wait_for(lambda: store.counts()["done"] == files, timeout=600, interval=0.5)
                store.close()
            time.sleep(3)  # settle after start
            pids = [serve.proc.pid, *_children(serve.proc.pid)]
            before = sum(_cpu_seconds(p) for p in pids)
            time.sleep(seconds)
            after = sum(_cpu_seconds(p) for p in pids)
        finally:
            serve.cleanup()
    return {
        "processes": len(pids),
        "seconds": seconds,
        "cpu_percent_of_one_core": round((after - before) / seconds * 100, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter idle windows")
    args = parser.parse_args()
    samples, idle_seconds = (10, 10.0) if args.quick else (30, 30.0)
    results: dict[str, object] = {}
    threading.current_thread().name = "bench"
    for mode, poll in (("native", 1.0), ("polling", 1.0)):
        key = f"stable_to_recorded_{mode}_poll{poll:g}s"
        results[key] = stable_to_recorded(mode, samples, stability=0.5, poll=poll)
        print(key, results[key], flush=True)
    for mode in ("native", "polling"):
        results[f"burst_intake_{mode}"] = burst_intake(mode, 1000, stability=0.5)
        print(f"burst_intake_{mode}", results[f"burst_intake_{mode}"], flush=True)
    results["burst_end_to_end"] = burst_end_to_end(1000)
    print("burst_end_to_end", results["burst_end_to_end"], flush=True)
    for mode in ("native", "polling"):
        key = f"idle_cpu_{mode}_10k_archive"
        results[key] = idle_cpu(mode, 10_000, idle_seconds)
        print(key, results[key], flush=True)
    results["idle_cpu_polling_10k_kept_in_inbox"] = idle_cpu(
        "polling", 10_000, idle_seconds, keep_in_inbox=True
    )
    print("idle_cpu_polling_10k_kept_in_inbox", results["idle_cpu_polling_10k_kept_in_inbox"], flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
