"""executor = "ray" under `restorer serve`, on a real local Ray cluster (tests/ray_support.py).

The daemon (store, watcher, publish, HTTP) is real; its Ray client runs in a supervised child process
and each actor runs the copy test processor (tests/daemon_processors.py) on a Ray node.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_processors import fake_photo
from tests.ray_support import RayCluster, assert_token_out_of_sight
from tests.support.serve import ServeProcess
from tests.support.waiting import wait_for
from tests.support.workspace import files_under, jobs

pytestmark = pytest.mark.ray


def serve_on(serves: list[ServeProcess], root: Path, cluster: RayCluster, **env: str) -> ServeProcess:
    settings = {"RESTORER_RAY_NUM_CPUS": "0.5", **env}
    # The daemon gets the token's path only; Ray's own variables say "no token" until it sets them itself.
    env = {**cluster.daemon_env, "RAY_AUTH_MODE": "disabled", **settings}
    serve = ServeProcess(root, env, "--executor", "ray", "--ray-address", cluster.address)
    serves.append(serve)
    serve.wait_ready()
    return serve


def health(serve: ServeProcess) -> dict[str, Any]:
    """The health document, also when it answers 503 (status down)."""
    try:
        return serve.health()
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def placed_workers(serve: ServeProcess, count: int) -> list[dict[str, Any]]:
    def placed() -> list[dict[str, Any]] | None:
        workers = serve.health()["workers"]
        return workers if len(workers) == count and all(w["state"] == "idle" for w in workers) else None

    return wait_for(placed, timeout=90)


def test_jobs_flow_through_ray_actors_on_two_nodes(
    root: Path, serves: list[ServeProcess], ray_cluster: RayCluster
) -> None:
    serve = serve_on(serves, root, ray_cluster, RESTORER_RAY_ACTORS="2")
    workers = placed_workers(serve, 2)
    assert {w["id"] for w in workers} == {"r1", "r2"} and all(w["device"].startswith("ray ") for w in workers)
    health = serve.health()
    assert health["executor"] == "ray" and health["status"] == "ok"
    # The cluster's token: never in health, the API, the log, a command line or an environment.
    token = ray_cluster.token_file.read_text().strip()
    assert token not in json.dumps(health) and token not in json.dumps(serve.api("/capabilities"))
    assert_token_out_of_sight(token, serve.proc.pid, serve.output())
    assert health["cluster"]["state"] == "connected" and health["cluster"]["nodes"] == 2
    for n in range(6):
        (root / "inbox" / f"photo{n}.jpg").write_bytes(fake_photo(b"SLOW0.6|" + f"photo {n}".encode()))
    (root / "inbox" / "broken.jpg").write_bytes(fake_photo(b"BAD bytes"))
    running = wait_for(lambda: (r := serve.api("/jobs?state=processing")["jobs"]) and r, timeout=60)
    assert all(job["worker"] in ("r1", "r2") for job in running)
    wait_for(lambda: sorted(j.state for j in jobs(root)) == ["done"] * 6 + ["failed"], timeout=90)
    done = [j for j in jobs(root) if j.state == "done"]
    assert all(j.attempts == 1 for j in done)
    assert {j.report["pid"] for j in done} <= {w["pid"] for w in workers}  # actors' processes did the work
    assert files_under(root / "outbox") == [f"photo{n}.bin" for n in range(6)]
    assert (root / "outbox" / "photo3.bin").read_bytes() == fake_photo(b"SLOW0.6|photo 3")
    broken = next(j for j in jobs(root) if j.state == "failed")
    assert broken.failure_kind == "bad-input" and broken.error.startswith(
        "the image data stops after 3 bytes"
    )
    wait_for(
        lambda: files_under(root / "failed") == ["broken.jpg", "broken.jpg.error.txt"]
    )  # moved after the row
    assert serve.terminate() == 0


def test_sigkill_of_an_actor_mid_job_requeues_it_and_it_completes_exactly_once(
    root: Path, serves: list[ServeProcess], ray_cluster: RayCluster
) -> None:
    serve = serve_on(serves, root, ray_cluster, RESTORER_RAY_ACTORS="1")
    [worker] = placed_workers(serve, 1)
    (root / "inbox" / "long.jpg").write_bytes(fake_photo(b"SLOW3|killed mid-job"))
    wait_for(lambda: (js := jobs(root)) and js[0].state == "processing" and js[0].progress > 0, timeout=60)
    os.kill(worker["pid"], signal.SIGKILL)
    wait_for(lambda: [j.state for j in jobs(root)] == ["done"], timeout=120)
    job = jobs(root)[0]
    assert job.attempts == 2 and "Actor" in (job.note or ""), job.note  # why attempt 1 failed
    assert files_under(root / "outbox") == ["long.bin"]  # published exactly once
    [replacement] = placed_workers(serve, 1)
    assert replacement["pid"] != worker["pid"]  # the pool refilled
    assert serve.health()["status"] == "ok"
    assert serve.terminate() == 0


def test_lost_head_degrades_health_keeps_the_queue_and_drains_it_once_the_head_returns(
    root: Path, serves: list[ServeProcess], own_cluster: RayCluster
) -> None:
    cluster = own_cluster
    cluster.start_head(num_cpus=2)
    serve = serve_on(serves, root, cluster, RESTORER_RAY_ACTORS="1", RESTORER_MAX_ATTEMPTS="5")
    placed_workers(serve, 1)
    (root / "inbox" / "running.jpg").write_bytes(fake_photo(b"SLOW2|running when the head dies"))
    wait_for(lambda: [j.state for j in jobs(root)] == ["processing"], timeout=60)
    for n in range(3):
        (root / "inbox" / f"queued{n}.jpg").write_bytes(fake_photo(f"waiting {n}".encode()))
    wait_for(lambda: len(jobs(root)) == 4)
    cluster.kill_head()
    degraded = wait_for(lambda: (h := health(serve))["status"] == "degraded" and h, timeout=90)
    assert any(r.startswith("Ray cluster unreachable") for r in degraded["reasons"])
    assert serve.proc.poll() is None  # the daemon stays up
    assert files_under(root / "outbox") == []
    assert sorted(j.state for j in jobs(root)) == ["queued"] * 4  # nothing lost, nothing failed
    cluster.start_head(num_cpus=2)  # the same address again
    wait_for(lambda: [j.state for j in jobs(root)] == ["done"] * 4, timeout=180)
    assert files_under(root / "outbox") == ["queued0.bin", "queued1.bin", "queued2.bin", "running.bin"]
    wait_for(lambda: health(serve)["status"] == "ok", timeout=30)
    assert serve.terminate() == 0


def test_a_box_switched_off_mid_job_requeues_it_and_a_box_that_joins_takes_it_over(
    root: Path, serves: list[ServeProcess], own_cluster: RayCluster
) -> None:
    # Actors may run only on "GPU boxes" (nodes with the `box` resource); the head has none.
    cluster = own_cluster
    cluster.start_head(num_cpus=2)
    first_box = cluster.add_node(num_cpus=2, resources='{"box": 1}')
    env = {"RESTORER_RAY_ACTORS": "1", "RESTORER_RAY_RESOURCES": '{"box": 1}'}
    serve = serve_on(serves, root, cluster, **env)
    placed_workers(serve, 1)
    (root / "inbox" / "long.jpg").write_bytes(fake_photo(b"SLOW4|the box is switched off under it"))
    wait_for(lambda: (js := jobs(root)) and js[0].state == "processing" and js[0].progress > 0, timeout=60)
    first_box.kill()  # the whole node at once: raylet, its workers, the actor
    wait_for(lambda: (js := jobs(root)) and js[0].state == "queued" and js[0].attempts == 1, timeout=120)
    waiting = wait_for(lambda: (ws := health(serve)["workers"]) and ws[0]["state"] == "waiting" and ws)
    assert waiting[0]["job_id"] is None  # no box has room: the slot claims nothing
    cluster.add_node(num_cpus=2, resources='{"box": 1}')  # another box joins
    wait_for(lambda: [j.state for j in jobs(root)] == ["done"], timeout=180)
    job = jobs(root)[0]
    assert job.attempts == 2 and files_under(root / "outbox") == ["long.bin"]
    assert serve.terminate() == 0
