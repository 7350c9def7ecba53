"""The worker pool (daemon/worker_pool.py): `workers = N` local worker processes under `restorer serve`.

Real service, store, watcher, worker processes and HTTP servers; the pipeline stage is the copy test
processor (tests/daemon_processors.py), whose SLOW<s> inputs hold a worker for <s> seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.health import HealthState
from daemon.settings import Settings
from daemon.store import JobStore
from daemon.worker_pool import WorkerPool, visible_cuda_devices, worker_devices
from tests.daemon_processors import CopyProcessor, fake_photo
from tests.support.serve import ServeProcess
from tests.support.settings import make_settings
from tests.support.site import png_bytes
from tests.support.waiting import wait_for
from tests.support.workspace import files_under, jobs


def test_visible_cuda_devices_follow_cuda_visible_devices_else_the_driver(tmp_path: Path) -> None:
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (gpus / bus).mkdir()
    assert visible_cuda_devices({}, gpus) == ["0", "1"]
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": "2,3,1"}, gpus) == ["2", "3", "1"]
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": ""}, gpus) == []
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, gpus) == ["0"]  # CUDA stops at -1
    assert visible_cuda_devices({}, tmp_path / "no-driver") == []


def test_worker_devices_one_per_gpu_for_auto_else_round_robin_or_cpu() -> None:
    gpus = {"CUDA_VISIBLE_DEVICES": "4,7"}
    assert worker_devices(Settings(workers="auto"), gpus) == ["4", "7"]
    assert worker_devices(Settings(workers=3), gpus) == ["4", "7", "4"]
    assert worker_devices(Settings(workers="auto", device="cpu"), gpus) == [None]
    assert worker_devices(Settings(workers="auto"), {"CUDA_VISIBLE_DEVICES": ""}) == [None]
    assert worker_devices(Settings(workers=2), {"CUDA_VISIBLE_DEVICES": ""}) == [None, None]
    with pytest.raises(ValueError, match="workers must be 1 or more"):
        Settings(workers=0)


def start(
    serves: list[ServeProcess], root: Path, *extra: str, env: dict[str, str] | None = None
) -> ServeProcess:
    serve = ServeProcess(root, env, *extra)
    serves.append(serve)
    serve.wait_ready()
    return serve


def drop_in_order(root: Path, names: list[str], data: bytes) -> None:
    """One file at a time, each after the previous became a job, so arrival order is the name order."""
    for count, name in enumerate(names, start=1):
        (root / "inbox" / name).write_bytes(fake_photo(data + name.encode()))
        wait_for(lambda count=count: len(jobs(root)) == count)


def test_two_workers_run_two_jobs_at_once_and_claim_in_arrival_order(
    root: Path, serves: list[ServeProcess]
) -> None:
    # CUDA_VISIBLE_DEVICES as on a two-GPU box: `auto` gives one worker per device, each seeing only its own.
    serve = start(serves, root, "--workers", "auto", env={"CUDA_VISIBLE_DEVICES": "3,5"})
    health = serve.health()
    assert [(w["id"], w["device"], w["state"]) for w in health["workers"]] == [
        ("w1", "cuda:3", "idle"),
        ("w2", "cuda:5", "idle"),
    ]
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    drop_in_order(root, names, b"SLOW1.5|")
    running = wait_for(lambda: (r := serve.api("/jobs?state=processing")["jobs"]) and len(r) == 2 and r)
    assert sorted(job["worker"] for job in running) == ["w1", "w2"]  # each running job names its worker
    wait_for(lambda: [j.state for j in jobs(root)] == ["done"] * 5, timeout=60)
    done = jobs(root)
    assert [
        j.input_path for j in sorted(done, key=lambda j: j.started_at)
    ] == names  # claimed in arrival order
    assert all(j.attempts == 1 for j in done)
    overlap = [a for a, b in itertools.pairwise(done) if b.started_at < a.finished_at]
    assert overlap, "no two jobs ever ran at the same time"
    pids = {j.report["pid"] for j in done}
    assert len(pids) == 2 and pids == {w["pid"] for w in serve.health()["workers"]}
    # Each worker process had its own device in its environment before it loaded anything.
    assert {j.report["cuda_visible_devices"] for j in done} == {"3", "5"}
    assert files_under(root / "outbox") == ["a.bin", "b.bin", "c.bin", "d.bin", "e.bin"]
    assert serve.terminate() == 0


def test_sigkill_of_one_worker_requeues_only_its_job(root: Path, serves: list[ServeProcess]) -> None:
    serve = start(serves, root, "--workers", "2")
    drop_in_order(root, ["first.jpg", "second.jpg"], b"SLOW3|")
    workers = wait_for(
        lambda: (ws := serve.health()["workers"]) and all(w["state"] == "busy" for w in ws) and ws
    )
    victim = next(w for w in workers if w["id"] == "w2")
    survivor = next(w for w in workers if w["id"] == "w1")
    wait_for(lambda: all(j.progress > 0 for j in jobs(root)))
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: [j.state for j in jobs(root)] == ["done", "done"], timeout=60)
    by_id = {j.id: j for j in jobs(root)}
    assert by_id[victim["job_id"]].attempts == 2  # the killed worker's job ran again
    assert by_id[survivor["job_id"]].attempts == 1  # the other worker's job was never touched
    assert files_under(root / "outbox") == ["first.bin", "second.bin"]
    health = serve.health()
    assert health["worker_restarts"] == 1 and health["status"] == "ok"
    assert {w["id"] for w in health["workers"] if w["pid"] != victim["pid"]} == {"w1", "w2"}  # replaced
    assert "w2 exited (code -9)" in serve.output()
    assert serve.terminate() == 0


def test_ray_actor_plan_one_per_gpu_else_one_per_node_and_explicit_counts() -> None:
    from daemon.ray_executor import actor_plan

    ray = {"executor": "ray", "ray_address": "nas:6379", "ray_token_file": "/etc/restorer/ray_token"}
    count, each = actor_plan(Settings(**ray), {"GPU": 4.0, "CPU": 32.0}, alive_nodes=3)
    assert (count, each.num_gpus, each.num_cpus) == (4, 1.0, 1.0)  # one per GPU, one GPU each
    count, each = actor_plan(Settings(**ray), {"CPU": 16.0}, alive_nodes=2)
    assert (count, each.num_gpus) == (2, 0.0)  # no GPUs: one CPU actor per node
    count, each = actor_plan(
        Settings(**ray, ray_actors=3, ray_num_cpus=4, ray_resources={"photos": 1}), {"CPU": 16.0}, 2
    )
    assert (count, each.num_cpus, each.resources, each.label()) == (3, 4.0, {"photos": 1.0}, "4 CPU")
    with pytest.raises(ValueError, match="needs ray_address"):
        Settings(executor="ray", ray_token_file="/etc/restorer/ray_token")
    with pytest.raises(ValueError, match="needs ray_token_file: the file with the Ray cluster's token"):
        Settings(executor="ray", ray_address="nas:6379")


def test_an_encode_longer_than_hang_seconds_finishes_on_its_first_worker(
    root: Path, serves: list[ServeProcess]
) -> None:
    # hang_seconds 2, an encode of 6 s: before heartbeats the worker was killed as hung mid-encode.
    serve = ServeProcess(
        root, None, "--hang-seconds", "2", processor="tests.daemon_processors:SlowEncodeProcessor"
    )
    serves.append(serve)
    serve.wait_ready()
    (root / "inbox" / "big.png").write_bytes(png_bytes(16, 16))
    job = wait_for(lambda: (js := jobs(root)) and js[0].state in ("done", "failed") and js[0], timeout=60)
    assert job.state == "done" and job.attempts == 1, (job.error, serve.output())
    assert job.report["output_size"] == [64, 64] and files_under(root / "outbox") == ["big.png"]
    assert job.seconds is not None and job.seconds >= 6.0  # the encode really took longer than hang_seconds
    assert serve.health()["worker_restarts"] == 0
    assert serve.output().count("worker w1 started") == 1 and "silent for" not in serve.output()
    assert serve.terminate() == 0


def test_an_encode_stuck_past_its_deadline_is_still_killed_as_hung(
    root: Path, serves: list[ServeProcess]
) -> None:
    serve = ServeProcess(
        root,
        None,
        "--hang-seconds",
        "2",
        "--max-attempts",
        "1",
        processor="tests.daemon_processors:StuckEncodeProcessor",
    )
    serves.append(serve)
    serve.wait_ready()
    (root / "inbox" / "stuck.png").write_bytes(png_bytes(16, 16))
    wait_for(lambda: (js := jobs(root)) and js[0].stage == "encode", timeout=30)
    encoding = time.monotonic()
    job = wait_for(lambda: (js := jobs(root)) and js[0].state == "failed" and js[0], timeout=30)
    # Heartbeats for the 3 s deadline, then 2 s of silence: killed, not earlier, not never.
    assert time.monotonic() - encoding >= 4.0
    assert job.failure_kind == "crash" and job.attempts == 1
    assert "encode still running after 3 s: no more heartbeats" in serve.output()
    assert "silent for" in serve.output() and "was restarted" in job.error + serve.output()
    wait_for(lambda: serve.output().count("worker w1 started") == 2)  # restarted, ready for the next job
    assert files_under(root / "failed") == ["stuck.png", "stuck.png.error.txt"]
    assert serve.terminate() == 0


def test_a_slow_requeue_after_a_worker_dies_leaves_the_event_loop_answering(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool runs on the service's event loop (API, page, watchdog pings). Putting a dead worker's job
    # back may wait on SQLite or move a file across filesystems: it must not stall the loop.
    settings = make_settings(root)
    store = JobStore(settings.db_path)
    data = fake_photo(b"SLOW30|held by the worker that dies")
    (root / "inbox" / "held.jpg").write_bytes(data)
    stat = (root / "inbox" / "held.jpg").stat()
    job = store.add("held.jpg", hashlib.sha256(data).hexdigest(), stat.st_size, stat.st_mtime).job
    real_requeue = store.requeue_interrupted

    def slow_requeue(*args: Any, **kwargs: Any) -> Any:
        time.sleep(2.0)  # a writer holding the database, a move to failed/ on a slow share
        return real_requeue(*args, **kwargs)

    monkeypatch.setattr(store, "requeue_interrupted", slow_requeue)

    async def scenario() -> tuple[float, float, int]:
        loop = asyncio.get_running_loop()
        pool = WorkerPool(
            settings, store, HealthState(), lambda needed, why: None, processor_factory=CopyProcessor
        )
        await pool.start()
        pool.wake()
        while not any(slot.job_id == job.id for slot in pool.slots()):
            await asyncio.sleep(0.05)
        lags: list[float] = []

        async def probe() -> None:  # how late each 20 ms sleep wakes up: the loop's answer time
            while True:
                before = loop.time()
                await asyncio.sleep(0.02)
                lags.append(loop.time() - before - 0.02)

        probing = asyncio.create_task(probe())
        os.kill(pool.slots()[0].pid or 0, signal.SIGKILL)
        started = time.monotonic()
        while pool.slots()[0].state != "restarting":
            await pool.supervise()  # notices the death; the requeue runs in a thread meanwhile
            await asyncio.sleep(0.02)
        took = time.monotonic() - started
        probing.cancel()
        await pool.stop(1.0)
        return took, max(lags), len(lags)

    took, worst_lag, probes = asyncio.run(scenario())
    assert took >= 2.0  # the slow requeue really ran inside supervise()
    assert worst_lag < 0.5 and probes >= 40, (worst_lag, probes)  # the loop kept answering meanwhile
    requeued = store.get(job.id)
    assert requeued.state == "queued" and requeued.attempts == 1 and files_under(root / "outbox") == []
    store.close()
