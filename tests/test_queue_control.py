"""Pause / resume and priority (issue 19 item 2): the store's rules, then a real `restorer serve`
(real worker process, real folders, real HTTP) driven through the API and the `restorer queue` CLI.

The worker stage is the test copy processor: a dropped b"SLOW<s>" file takes <s> seconds, reporting
progress every 0.1 s, so "the running job" is something a test can hold in place.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon import ReadModel
from daemon.store import SCHEMA_VERSION, JobStore, migrate
from status_site.eta import Estimator
from tests.daemon_processors import fake_photo
from tests.support.paths import REPO
from tests.support.settings import make_settings
from tests.support.site import Site, running_serve

PROCESSOR = "tests.daemon_processors:CopyProcessor"
FAST_POLL = {"RESTORER_HEARTBEAT_SECONDS": "0.5"}


def add(store: JobStore, name: str) -> int:
    return store.add(name, name + "-sha", 1, 1.0).job.id


# -- the store ------------------------------------------------------------------------------------------


def test_prioritize_moves_a_queued_job_first_and_claims_follow_the_shown_order(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    first, second, third = (add(store, name) for name in ("a", "b", "c"))
    assert store.prioritize(third).priority == 1
    assert store.prioritize(third).priority == 1  # already first: unchanged
    store.prioritize(second)
    shown = [job.id for job in store.list(order="queue").jobs]
    assert shown == [second, third, first]
    claimed = [store.claim_next().id for _ in range(3)]  # type: ignore[union-attr]
    assert claimed == shown
    assert store.prioritize(first).state == "processing"  # not queued: unchanged


def test_a_paused_queue_starts_nothing_and_pause_now_asks_the_running_job_back(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    running, waiting = add(store, "a"), add(store, "b")
    assert store.claim_next().id == running  # type: ignore[union-attr]
    paused = store.pause_queue("CLI on loopback")
    assert (paused.paused, paused.mode, paused.by) == (True, "after-current", "CLI on loopback")
    assert store.claim_next() is None
    assert store.update_progress(running, 0.5, "upscale") is None  # after the current photo: it goes on
    again = store.pause_queue("page", now=True)
    assert (again.mode, again.by, again.at) == ("now", "CLI on loopback", paused.at)  # first pauser kept
    assert store.update_progress(running, 0.6, "upscale") == "pause"
    back = store.requeue_first(running)
    assert (back.state, back.attempts) == ("queued", 0)
    assert [job.id for job in store.list(order="queue").jobs] == [running, waiting]
    assert store.resume_queue().paused is False
    assert store.claim_next().id == running  # type: ignore[union-attr]


def test_the_schema_upgrade_adds_the_pause_to_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    old = JobStore.__new__(JobStore)  # a database left by the previous release (schema 5)
    old.db_path = path
    old._engine = old._open_engine()
    assert migrate(old._engine, upto=5) == 5
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO jobs (input_path, content_sha256, size_bytes, mtime, detected_at) "
            "VALUES ('old.jpg', 'x', 1, 1.0, '2026-01-01T00:00:00+00:00')"
        )
    old.close()
    store = JobStore(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.queue_pause().paused is False
    assert store.claim_next().input_path == "old.jpg"  # type: ignore[union-attr]


# -- a real daemon --------------------------------------------------------------------------------------


def drop(site: Site, name: str, seconds: float) -> None:
    site.settings.inbox.mkdir(parents=True, exist_ok=True)
    path = site.settings.inbox / name
    partial = path.with_name("." + name + ".part")
    partial.write_bytes(fake_photo(f"SLOW{seconds}|{name}".encode()))
    partial.rename(path)


def jobs_in_queue(site: Site) -> list[dict[str, Any]]:
    answer = site.get("/api/v1/jobs?order=queue&state=queued,processing&limit=100")
    assert answer.status_code == 200, answer.text
    return answer.json()["jobs"]


def job_named(site: Site, name: str) -> dict[str, Any] | None:
    listing = site.get("/api/v1/jobs?limit=100").json()["jobs"]
    return next((job for job in listing if job["name"] == name), None)


def wait_state(site: Site, name: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = job_named(site, name)
        return job if job is not None and job["state"] == state else None

    return site.wait_for(reached, timeout, f"{name} {state}")


def cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESTORER_API_PORT": site.api.rsplit(":", 1)[1]}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "queue", *args], env=env, capture_output=True, text=True, timeout=60
    )


def health(site: Site) -> dict[str, Any]:
    return site.get("/api/v1/health").json()


def test_pause_after_current_prioritize_and_resume_run_in_the_order_shown(tmp_path: Path) -> None:
    with running_serve(tmp_path, env_extra=FAST_POLL, processor=PROCESSOR) as site:
        drop(site, "a.bmp", 2.0)
        wait_state(site, "a.bmp", "processing")
        paused = cli(site, "pause")
        assert paused.returncode == 0, paused.stderr
        assert "paused by CLI on loopback" in paused.stdout
        for name in ("b.bmp", "c.bmp", "d.bmp"):
            drop(site, name, 0.1)
            wait_state(site, name, "queued")
        wait_state(site, "a.bmp", "done")  # the running photo finishes
        time.sleep(1.5)  # three of the workers' 0.5 s polls: nothing starts while paused
        assert [job["state"] for job in jobs_in_queue(site)] == ["queued"] * 3
        state = health(site)
        assert state["queue_paused"] is True and state["queue_pause_mode"] == "after-current"
        assert state["queue_paused_by"] == "CLI on loopback" and state["queue_paused_at"]
        assert all(job["eta_seconds"] is None for job in jobs_in_queue(site))  # nobody knows when

        d_id = job_named(site, "d.bmp")["id"]  # type: ignore[index]
        moved = site.post(f"/api/v1/jobs/{d_id}/prioritize")
        assert (
            moved.status_code == 200
            and moved.json()["changed"] is True
            and moved.json()["queue_position"] == 1
        )
        c_id = job_named(site, "c.bmp")["id"]  # type: ignore[index]
        first = cli(site, "first", str(c_id))
        assert first.returncode == 0 and "moved to the front" in first.stdout, first.stderr
        shown = [job["name"] for job in jobs_in_queue(site)]
        assert shown == ["c.bmp", "d.bmp", "b.bmp"]

        resumed = cli(site, "resume")
        assert resumed.returncode == 0 and "queue: running" in resumed.stdout, resumed.stderr
        for name in shown:
            wait_state(site, name, "done")
        started = {name: job_named(site, name)["started_at"] for name in shown}  # type: ignore[index]
        assert sorted(shown, key=lambda name: started[name]) == shown
        assert health(site)["queue_paused"] is False


def test_pause_now_requeues_the_running_job_first_and_the_pause_survives_a_restart(tmp_path: Path) -> None:
    with running_serve(tmp_path, env_extra=FAST_POLL, processor=PROCESSOR) as site:
        drop(site, "long.bmp", 30.0)
        site.wait_for(lambda: (job_named(site, "long.bmp") or {}).get("progress", 0) > 0, 60, "progress")
        drop(site, "next.bmp", 0.1)
        wait_state(site, "next.bmp", "queued")
        paused = site.post("/api/v1/queue/pause", json={"when": "now"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["queue_pause_mode"] == "now"
        back = wait_state(site, "long.bmp", "queued", timeout=10)
        assert back["attempts"] == 0  # not the photo's fault: the attempt is refunded
        assert [job["name"] for job in jobs_in_queue(site)] == ["long.bmp", "next.bmp"]
        assert site.post("/api/v1/queue/pause", json={"when": "later"}).status_code == 400
    with running_serve(tmp_path, env_extra=FAST_POLL, processor=PROCESSOR) as site:
        state = health(site)
        assert state["queue_paused"] is True and state["queue_paused_by"] == "API on loopback"
        assert "paused by API on loopback" in state["queue_waiting_reason"]
        time.sleep(1.5)
        assert [job["state"] for job in jobs_in_queue(site)] == ["queued", "queued"]
        assert site.post("/api/v1/queue/resume").json()["queue_paused"] is False
        wait_state(site, "long.bmp", "processing", timeout=10)  # first in line, at once


def test_the_eta_counts_the_wait_for_the_next_run_window_and_has_none_while_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    settings = make_settings(tmp_path, run_hours=["22:00-07:00"])
    store = JobStore(settings.db_path)
    done = add(store, "done.jpg")
    store.claim_next()
    store.finish(done, "done.png", 1, {"input_size": [1000, 1000], "seconds": 10.0})  # 10 s per megapixel
    waiting = add(store, "waiting.jpg")
    reads = ReadModel(settings.db_path)
    estimator = Estimator(reads, settings)
    queue = reads.queue(10)
    evening = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)  # two hours before the window opens
    assert estimator.estimate(queue, now=evening)[waiting] == 2 * 3600 + 10.0
    night = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)
    assert estimator.estimate(queue, now=night)[waiting] == 10.0
    store.pause_queue("test")
    assert estimator.estimate(queue, now=night)[waiting] is None
    reads.close()
    store.close()


def test_the_eta_counts_each_job_at_the_rate_of_its_own_model_chain(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = JobStore(settings.db_path)

    def finish(name: str, model: str | list[str], seconds: float) -> None:
        job = store.add(name, name + "-sha", 1, 1.0, options={"model": model}).job.id
        store.claim_next()
        store.finish(job, name + ".png", 1, {"input_size": [1000, 1000], "seconds": seconds})

    finish("fast.jpg", "small", 2.0)  # 2 s per megapixel
    finish("slow.jpg", "big", 30.0)  # 30 s per megapixel
    finish("chain.jpg", ["clean", "big"], 40.0)
    waiting = {
        name: store.add(name, name + "-sha", 1, 1.0, options={"model": model}, input_megapixels=1.0).job.id
        for name, model in [
            ("q-small", "small"),
            ("q-big", "big"),
            ("q-chain", ["clean", "big"]),  # run before: its own rate
            ("q-steps", ["small", "big"]),  # never run as a chain: its steps' rates added
            ("q-unknown", ["new", "big"]),  # a step never seen: the overall rate, once per step
        ]
    }
    reads = ReadModel(settings.db_path)
    etas = Estimator(reads, settings).estimate(reads.queue(10))
    overall = (2.0 + 30.0 + 40.0) / 3
    work = [2.0, 30.0, 40.0, 32.0, 2 * overall]
    assert [etas[waiting[name]] for name in waiting] == pytest.approx(
        [sum(work[: i + 1]) for i in range(len(work))], abs=0.1
    )
    reads.close()
    store.close()


def test_outside_run_hours_a_real_daemon_starts_nothing_and_says_when_it_will(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    later = [(now + timedelta(minutes=minutes)).strftime("%H:%M") for minutes in (120, 180)]
    quiet = {**FAST_POLL, "TZ": "UTC", "RESTORER_RUN_HOURS": json.dumps([f"{later[0]}-{later[1]}"])}
    with running_serve(tmp_path, env_extra=quiet, processor=PROCESSOR) as site:
        drop(site, "night.bmp", 0.1)
        wait_state(site, "night.bmp", "queued")
        time.sleep(1.5)  # three of the workers' polls
        assert job_named(site, "night.bmp")["state"] == "queued"  # type: ignore[index]
        state = health(site)
        assert state["queue_paused"] is False
        assert state["queue_next_run_at"].startswith(
            (now + timedelta(minutes=120)).strftime("%Y-%m-%dT%H:%M")
        )
        assert f"next run at {later[0]}" in state["queue_waiting_reason"]
    around = [(now + timedelta(minutes=minutes)).strftime("%H:%M") for minutes in (-5, 120)]
    always = {**quiet, "RESTORER_RUN_HOURS": json.dumps([f"{around[0]}-{around[1]}"])}
    with running_serve(tmp_path, env_extra=always, processor=PROCESSOR) as site:
        wait_state(site, "night.bmp", "done", timeout=30)
        assert health(site)["queue_next_run_at"] is None
