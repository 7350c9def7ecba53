"""Ray executor numbers (docs/performance.md, "Several workers and Ray"), on a real local Ray cluster.

  dispatch   per-image cost of going through a Ray actor instead of the local worker: the same Worker
             (claim -> read -> process -> publish -> finish) with the copy test processor, once
             in-process and once through ActorProcessor (bytes to the actor, bytes and report back),
             for a 1 MP and a 12 MP input (incompressible PNG-sized payloads). Median of --repeats.
  scaling    `restorer serve --executor ray` with a fixed 0.5 s service time per job (the copy
             processor's SLOW input) on 1, 2, 4 and 8 actors spread over two Ray nodes on this machine:
             jobs/s from the first claim to the last finish (database timestamps) against linear, and a
             check that every job was published exactly once.
  real       the real pipeline (realesr-animevideov3, no faces) on the same small photos: the local
             worker vs 2 CPU actors.

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_ray.py [--only dispatch,scaling,real]
Nothing here downloads anything; the cluster is two `ray start` processes on 127.0.0.1, stopped by pid.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.job_loop import Worker  # noqa: E402
from daemon.settings import Settings  # noqa: E402
from daemon.store import JobStore  # noqa: E402
from tests.daemon_processors import CopyProcessor, fake_photo  # noqa: E402
from tests.ray_support import RayCluster  # noqa: E402
from tests.support.serve import COPY_PROCESSOR, ServeProcess  # noqa: E402
from tests.support.settings import make_folders, make_settings  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

SERVICE_SECONDS = 0.5
JOBS_PER_ACTOR = 10


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores, {platform.python_version()}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- dispatch overhead ------------------------------------------------------------------------------------


def _add_job(settings: Settings, store: JobStore, name: str, data: bytes) -> None:
    path = Path(settings.inbox) / name
    path.write_bytes(data)
    stat = path.stat()
    options = settings.restore_options().to_dict()
    digest = hashlib.sha256(data).hexdigest()
    store.add(name, digest, stat.st_size, stat.st_mtime, options=options, duplicate_content="process")


def _time_jobs(settings: Settings, processor: Any, data: bytes, repeats: int) -> float:
    store = JobStore(settings.db_path)
    worker = Worker(settings, store, processor, lambda message: None)
    seconds = []
    for n in range(repeats + 1):  # the first run warms caches and the actor's code
        _add_job(settings, store, f"in{n}-{time.monotonic_ns()}.png", data)
        began = time.perf_counter()
        job = worker.run_one()
        elapsed = time.perf_counter() - began
        assert job is not None and job.state == "done", job
        if n:
            seconds.append(elapsed)
    store.close()
    return statistics.median(seconds)


def bench_dispatch(cluster: RayCluster, repeats: int) -> list[str]:
    import ray

    from daemon.ray_executor import ActorProcessor, RestoreActor

    rows = ["| input | local worker (ms) | Ray actor (ms) | dispatch overhead (ms) |", "|---|---|---|---|"]
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        for label, megapixels in (("1 MP", 1), ("12 MP", 12)):
            data = b"\x89PNG" + os.urandom(megapixels * 3_000_000)  # 3 bytes a pixel, incompressible
            root = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
            settings = make_settings(root, originals="delete", duplicate_content="process")
            actor = (
                ray.remote(RestoreActor)
                .options(num_cpus=0.5, max_concurrency=2)
                .remote(settings.to_child_json(), CopyProcessor)
            )
            ray.get(actor.ready.remote())
            local = _time_jobs(settings, CopyProcessor(settings), data, repeats)
            remote = _time_jobs(settings, ActorProcessor(actor, settings), data, repeats)
            ray.kill(actor)
            shutil.rmtree(root, ignore_errors=True)
            rows.append(
                f"| {label} | {local * 1000:.1f} | {remote * 1000:.1f} | {(remote - local) * 1000:.1f} |"
            )
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    return rows


# -- scaling and the real model through `restorer serve` -----------------------------------------------------


def _run_serve(
    root: Path,
    env: dict[str, str],
    files: dict[str, bytes],
    workers: int,
    timeout: float,
    processor: str | None = COPY_PROCESSOR,
) -> tuple[float, list[Any]]:
    """Start the daemon, wait until `workers` slots are idle (actors placed, models loaded), then drop
    every file at once, so the span measures restoring, not starting actors one after another."""
    serve = ServeProcess(root, env, processor=processor)
    try:
        serve.wait_ready(timeout=300)
        wait_for(lambda: sum(w["state"] == "idle" for w in serve.health()["workers"]) == workers, timeout=300)
        for name, data in files.items():
            (root / "inbox" / name).write_bytes(data)
        store_path = root / "state" / "jobs.sqlite3"

        def finished() -> list[Any] | None:
            store = JobStore(store_path)
            try:
                jobs = store.list(limit=5000, order="oldest").jobs
            finally:
                store.close()
            return jobs if len(jobs) == len(files) and all(j.state == "done" for j in jobs) else None

        jobs = wait_for(finished, timeout=timeout, interval=0.5)
        assert serve.terminate() == 0
    finally:
        serve.cleanup()
    span = max(j.finished_at for j in jobs) - min(j.started_at for j in jobs)
    return span.total_seconds(), jobs


def _fresh_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    make_folders(root)
    return root


def _published_once(root: Path, jobs: list[Any]) -> bool:
    outputs = [p for p in (root / "outbox").rglob("*") if p.is_file()]
    return len(outputs) == len(jobs) and all(j.attempts == 1 for j in jobs)


def bench_scaling(cluster: RayCluster) -> list[str]:
    rows = [
        "| actors | jobs | seconds | jobs/s | linear jobs/s | of linear | published once |",
        "|---|---|---|---|---|---|---|",
    ]
    for actors in (1, 2, 4, 8):
        count = actors * JOBS_PER_ACTOR
        files = {
            f"img{n:03d}.jpg": fake_photo(f"SLOW{SERVICE_SECONDS}|job {n}".encode()) for n in range(count)
        }
        root = _fresh_root()
        env = {**cluster.daemon_env, "RESTORER_EXECUTOR": "ray", "RESTORER_RAY_ADDRESS": cluster.address}
        env |= {"RESTORER_RAY_ACTORS": str(actors), "RESTORER_RAY_NUM_CPUS": "0.1"}
        seconds, jobs = _run_serve(root, env, files, actors, timeout=600)
        # Service-time bound: each actor runs one job at a time, so the ideal is actors / service time.
        rate, linear = count / seconds, actors / SERVICE_SECONDS
        once = _published_once(root, jobs)
        ratio = f"{rate / linear:.0%}"
        rows.append(f"| {actors} | {count} | {seconds:.2f} | {rate:.2f} | {linear:.2f} | {ratio} | {once} |")
        print(rows[-1], flush=True)
        shutil.rmtree(root, ignore_errors=True)
    return rows


def _photos(count: int) -> dict[str, bytes]:
    from tests.test_job_loop import png_bytes

    return {f"photo{n}.png": png_bytes(256, seed=n) for n in range(count)}


def bench_real(cluster: RayCluster, count: int) -> list[str]:
    rows = [
        "| executor | images | seconds (first claim to last finish) | s/image | published once |",
        "|---|---|---|---|---|",
    ]
    real = {
        "RESTORER_MODEL": "realesr-animevideov3",
        "RESTORER_FACES": "false",
        "RESTORER_WEIGHTS_DIR": str(REPO / "weights"),
    }
    runs = {
        "local, 1 worker": {},
        "ray, 2 CPU actors": {
            **cluster.daemon_env,
            "RESTORER_EXECUTOR": "ray",
            "RESTORER_RAY_ADDRESS": cluster.address,
            "RESTORER_RAY_ACTORS": "2",
            "RESTORER_RAY_NUM_CPUS": "1",
        },
    }
    for label, env in runs.items():
        root = _fresh_root()
        # Share the converted-model cache between runs so both measure restoring, not converting.
        cache = REPO / "var" / "bench-ray-cache"
        cache.mkdir(parents=True, exist_ok=True)
        (root / "state" / "cache").symlink_to(cache)
        workers = 2 if "RESTORER_EXECUTOR" in env else 1
        seconds, jobs = _run_serve(
            root, {**real, **env}, _photos(count), workers, timeout=900, processor=None
        )
        rows.append(
            f"| {label} | {count} | {seconds:.1f} | {seconds / count:.2f} | {_published_once(root, jobs)} |"
        )
        print(rows[-1], flush=True)
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="dispatch,scaling,real")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--real-images", type=int, default=6)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    cluster = RayCluster()
    os.environ.update(cluster.env)  # this process is a driver too (bench_dispatch)
    try:
        cluster.start_head(num_cpus=8)
        cluster.add_node(num_cpus=8)
        print(f"Ray cluster: 2 nodes at {cluster.address}", flush=True)
        if "dispatch" in parts:
            print("\n".join(bench_dispatch(cluster, args.repeats)), flush=True)
        if "scaling" in parts:
            print("\n".join(bench_scaling(cluster)), flush=True)
        if "real" in parts:
            print("\n".join(bench_real(cluster, args.real_images)), flush=True)
    finally:
        cluster.stop()
    print(f"load average after: {load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
