"""The job store and its read model on a real SQLite file: identity rules, queue order, crash requeue,
schema upgrades, throughput numbers, read-only reads."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from daemon import JobNotFoundError, JobQueryError, ReadModel
from daemon.store import (
    SCHEMA_VERSION,
    JobStore,
    SchemaTooNewError,
    StateOnNetworkFilesystemError,
    _make_engine,
    migrate,
)


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    s = JobStore(tmp_path / "state" / "jobs.sqlite3")
    yield s
    s.close()


def test_schema_created_on_first_start_with_wal(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    assert store.schema_version == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


def test_schema_upgraded_in_place_from_version_1(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    engine = _make_engine(db)
    assert migrate(engine, upto=1) == 1
    with sqlite3.connect(db) as conn:
        for _ in range(2):  # version 1 allowed the same file version twice: the upgrade merges them
            conn.execute(
                "INSERT INTO jobs (input_path, content_sha256, size_bytes, mtime, detected_at, state) "
                "VALUES ('old.jpg', 'aa', 3, 1.0, '2026-01-01T00:00:00+00:00', 'done')"
            )
    engine.dispose()
    store = JobStore(db)
    assert store.schema_version == SCHEMA_VERSION
    jobs = store.list(order="oldest").jobs
    assert [j.input_path for j in jobs] == ["old.jpg", "old.jpg"]
    assert jobs[0].original == "inbox" and jobs[1].original == "deleted"
    # The upgraded DB enforces the identity rule.
    assert store.add("old.jpg", "aa", 3, 1.0).created is False
    store.close()


def test_upgrade_keeps_where_archived_and_failed_originals_are(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    engine = _make_engine(db)
    assert migrate(engine, upto=2) == 2
    with sqlite3.connect(db) as conn:  # version 2 named the column after one of its two uses
        for path, place in (("a.jpg", "archived"), ("b.jpg", "failed_dir")):
            conn.execute(
                "INSERT INTO jobs (input_path, content_sha256, size_bytes, mtime, detected_at, state, "
                "original, archived_path) VALUES (?, 'h' || ?, 3, 1.0, '2026-01-01T00:00:00+00:00', "
                "'done', ?, ?)",
                (path, path, place, f"moved/{path}"),
            )
    engine.dispose()
    store = JobStore(db)
    jobs = store.list(order="oldest").jobs
    assert [(j.original, j.original_path) for j in jobs] == [
        ("archived", "moved/a.jpg"),
        ("failed_dir", "moved/b.jpg"),
    ]
    store.close()


def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    JobStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaTooNewError, match="newer than this restorer"):
        JobStore(db)


def test_database_on_network_filesystem_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:50 / {tmp_path} rw,relatime shared:30 - nfs4 nas:/photos rw,vers=4.2\n"
    )
    with pytest.raises(StateOnNetworkFilesystemError, match="nfs4"):
        JobStore(state / "jobs.sqlite3", mountinfo_file=mountinfo)
    assert not (state / "jobs.sqlite3").exists()


def test_same_content_under_new_name_is_skipped_with_a_note(store: JobStore) -> None:
    first = store.add("a.jpg", "h1", 10, 1.0).job
    twin = store.add("copy of a.jpg", "h1", 10, 2.0)
    assert twin.created and twin.duplicate_of == first.id
    assert twin.job.state == "cancelled"
    assert twin.job.note == f"skipped: same content as job {first.id} (a.jpg)"


def test_same_content_under_new_name_is_processed_when_configured(store: JobStore) -> None:
    first = store.add("a.jpg", "h1", 10, 1.0).job
    twin = store.add("b.jpg", "h1", 10, 1.0, duplicate_content="process")
    assert twin.job.state == "queued" and twin.job.note == f"same content as job {first.id} (a.jpg)"


def test_same_name_with_new_content_is_processed_again(store: JobStore) -> None:
    first = store.add("a.jpg", "h1", 10, 1.0).job
    second = store.add("a.jpg", "h2", 12, 5.0)
    assert second.created and second.job.id != first.id and second.job.state == "queued"


def test_touching_a_queued_file_does_not_queue_it_again(store: JobStore) -> None:
    first = store.add("a.jpg", "h1", 10, 1.0).job
    again = store.add("a.jpg", "h1", 10, 9.0)  # new mtime, same content
    assert not again.created and again.job.id == first.id
    assert store.counts()["queued"] == 1


def test_redropped_file_after_archiving_is_recognised_as_duplicate(store: JobStore) -> None:
    job = store.add("a.jpg", "h1", 10, 1.0).job
    store.claim_next()
    store.finish(job.id, "a.jpg", 40, {})
    store.set_original(job.id, "archived", "a.jpg")
    again = store.add("a.jpg", "h1", 10, 1.0)  # cp -p back into the inbox: identical version
    assert again.created and again.job.state == "cancelled" and again.duplicate_of == job.id


def test_restart_with_thousands_queued_creates_no_duplicate_rows(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    files = [(f"dir{i % 7}/img{i}.jpg", f"{i:064x}", 100 + i, 1000.0 + i) for i in range(2000)]
    for _round in range(2):  # a first start, then a restart that rescans everything
        store = JobStore(db)
        for path, sha, size, mtime in files:
            store.add(path, sha, size, mtime)
        store.close()
    store = JobStore(db)
    assert store.counts()["queued"] == 2000
    assert len(store.inbox_versions()) == 2000
    store.close()


def _add_many(db: str, start: int) -> None:
    store = JobStore(db)
    for i in range(200):
        store.add(f"f{i}.jpg", f"{i:064x}", 1, 1.0)
    store.close()


def test_concurrent_processes_adding_the_same_files_create_one_row_each(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.sqlite3")
    JobStore(db).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(db, n)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = JobStore(db)
    assert store.counts()["queued"] == 200
    store.close()


def test_jobs_are_claimed_in_arrival_order_and_priority_reorders(store: JobStore) -> None:
    ids = [store.add(f"{n}.jpg", str(n), 1, 1.0, priority=5 if n == 2 else 0).job.id for n in range(4)]
    assert [job.id for job in store.queue(10)] == [ids[2], ids[0], ids[1], ids[3]]
    assert store.queue_position(ids[2]) == 1
    assert store.queue_position(ids[0]) == 2
    order = []
    while (job := store.claim_next()) is not None:
        order.append(job.id)
        assert job.attempts == 1 and job.state == "processing"
        assert store.queue_position(job.id) == 0
        store.finish(job.id, f"{job.id}.png", 1, {"seconds": 0.1})
    assert order == [ids[2], ids[0], ids[1], ids[3]]
    assert store.counts()["done"] == 4


def test_interrupted_job_requeued_then_failed_at_max_attempts(store: JobStore) -> None:
    job = store.add("poison.jpg", "p", 1, 1.0).job
    for attempt in (1, 2):
        claimed = store.claim_next()
        assert claimed is not None and claimed.attempts == attempt
        result = store.requeue_interrupted(max_attempts=3)
        assert result.requeued == [job.id] and result.failed == []
    assert store.claim_next().attempts == 3
    result = store.requeue_interrupted(max_attempts=3)
    assert result.requeued == [] and [j.id for j in result.failed] == [job.id]
    failed = store.get(job.id)
    assert failed.state == "failed" and failed.failure_kind == "crash"
    assert "3 times" in failed.error and f"restorer jobs retry {job.id}" in failed.error


def test_graceful_requeue_refunds_the_attempt(store: JobStore) -> None:
    job = store.add("a.jpg", "h", 1, 1.0).job
    store.claim_next()
    again = store.requeue(job.id, refund_attempt=True)
    assert again.state == "queued" and again.attempts == 0


def test_retry_and_cancel_are_idempotent(store: JobStore) -> None:
    job = store.add("a.jpg", "h", 1, 1.0).job
    assert store.cancel(job.id).state == "cancelled"
    assert store.cancel(job.id).state == "cancelled"
    assert store.retry(job.id).state == "queued"
    assert store.retry(job.id).state == "queued"
    store.claim_next()
    running = store.cancel(job.id)
    assert running.state == "processing" and running.cancel_requested
    assert store.update_progress(job.id, 0.5, "upscale") == "cancel"  # the worker sees the request
    assert store.mark_cancelled(job.id, "cancelled while running").state == "cancelled"
    with pytest.raises(JobNotFoundError):
        store.retry(999)
    with pytest.raises(JobNotFoundError):
        store.cancel(999)


def test_list_pages_with_cursor_and_filters_by_state(store: JobStore) -> None:
    for n in range(5):
        store.add(f"{n}.jpg", str(n), 1, 1.0)
    store.cancel(2)
    first = store.list(limit=2)
    assert [j.id for j in first.jobs] == [5, 4] and first.next_cursor == "4"
    second = store.list(limit=2, cursor=first.next_cursor)
    assert [j.id for j in second.jobs] == [3, 2]
    last = store.list(limit=2, cursor=second.next_cursor)
    assert [j.id for j in last.jobs] == [1] and last.next_cursor is None
    assert [j.id for j in store.list(state="cancelled").jobs] == [2]
    assert [j.id for j in store.list(state=["queued"], order="oldest", limit=2).jobs] == [1, 3]
    with pytest.raises(JobQueryError, match="unknown state 'bogus'"):
        store.list(state="bogus")
    with pytest.raises(JobQueryError, match="not one this API returned"):
        store.list(cursor="x")


def test_job_to_dict_is_json_ready(store: JobStore) -> None:
    import json

    job = store.add("a.jpg", "h", 1, 1.0, options={"scale": 2.0}, preset="2x").job
    data = json.loads(json.dumps(job.to_dict()))
    assert data["options"] == {"scale": 2.0} and data["preset"] == "2x"
    assert data["detected_at"].endswith("+00:00")


def test_api_reads_during_writes_never_hit_database_is_locked(store: JobStore) -> None:
    errors: list[BaseException] = []
    stop = time.monotonic() + 1.5

    def writer() -> None:
        try:
            n = 0
            while time.monotonic() < stop:
                job = store.add(f"w{n}.jpg", f"w{n}", 1, 1.0).job
                store.update_progress(job.id, 0.5, "upscale")
                n += 1
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while time.monotonic() < stop:
                store.list(limit=20)
                store.counts()
                store.stats()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_queue_order_pages_with_the_running_job_first(store: JobStore) -> None:
    ids = [store.add(f"{n}.jpg", str(n), 1, 1.0, priority=1 if n == 3 else 0).job.id for n in range(5)]
    running = store.claim_next()  # the priority-1 job
    assert running is not None and running.id == ids[3]
    seen, cursor = [], None
    while True:
        page = store.list(["queued", "processing"], limit=2, cursor=cursor, order="queue")
        seen += [job.id for job in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [ids[3], ids[0], ids[1], ids[2], ids[4]]
    place = store.job_with_queue(ids[2], max_ahead=10)
    assert place.position == 3 and [job.id for job in place.ahead] == [ids[3], ids[0], ids[1], ids[2]]
    assert store.queue_position(ids[3]) == 0 and store.queue_position(999) is None


def test_finish_records_input_megapixels_and_work_seconds(store: JobStore) -> None:
    timed = store.add("a.jpg", "a", 1, 1.0).job
    store.claim_next()
    done = store.finish(timed.id, "a.png", 10, {"input_size": [2000, 1000], "seconds": 7.5})
    assert (done.input_megapixels, done.work_seconds) == (2.0, 7.5)
    # A report without its own clock: the wall time between start and finish stands in.
    untimed = store.add("b.jpg", "b", 1, 1.0).job
    store.claim_next()
    done = store.finish(untimed.id, "b.png", 10, {"input_size": [1000, 1000], "seconds": 0.0})
    assert done.input_megapixels == 1.0
    assert done.work_seconds == pytest.approx(done.seconds, abs=0.01)
    rate = store.rate()
    assert rate.mean_input_megapixels == pytest.approx(1.5)
    assert rate.seconds_per_megapixel == pytest.approx((7.5 + done.work_seconds) / 3.0)


def test_upgrade_fills_the_throughput_columns_of_done_jobs_from_their_reports(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    engine = _make_engine(db)
    assert migrate(engine, upto=2) == 2
    engine.dispose()
    rows = [
        ("timed.jpg", "done", '{"input_size": [4000, 3000], "seconds": 12.0}', "00:00:00", "00:00:20"),
        ("untimed.jpg", "done", '{"input_size": [1000, 500]}', "00:00:00", "00:00:04"),
        ("failed.jpg", "failed", '{"input_size": [10, 10], "seconds": 1.0}', "00:00:00", "00:00:01"),
    ]
    with sqlite3.connect(db) as conn:
        for name, state, report, started, finished in rows:
            conn.execute(
                "INSERT INTO jobs (input_path, content_sha256, size_bytes, mtime, detected_at, state, "
                "report, started_at, finished_at) "
                "VALUES (?, ?, 3, 1.0, '2026-01-01T00:00:00+00:00', ?, ?, ?, ?)",
                (name, name, state, report, f"2026-01-01T{started}+00:00", f"2026-01-01T{finished}+00:00"),
            )
    store = JobStore(db)
    jobs = {job.input_path: job for job in store.list().jobs}
    assert (jobs["timed.jpg"].input_megapixels, jobs["timed.jpg"].work_seconds) == (12.0, 12.0)
    assert jobs["untimed.jpg"].input_megapixels == 0.5
    assert jobs["untimed.jpg"].work_seconds == pytest.approx(4.0, abs=0.01)
    assert jobs["failed.jpg"].input_megapixels is None  # only done jobs count in the stats
    assert store.stats()["done_total"] == {"images": 2, "megapixels": 12.5, "busy_seconds": 16.0}
    store.close()


def test_the_read_model_cannot_write(store: JobStore) -> None:
    job = store.add("a.jpg", "a", 1, 1.0).job
    reads = ReadModel(store.db_path)
    try:
        assert reads.get_or_raise(job.id).input_path == "a.jpg"
        with pytest.raises(Exception, match=r"readonly|read-only"), reads._read() as conn:
            conn.exec_driver_sql("DELETE FROM jobs")
        assert reads.counts()["queued"] == 1
        with pytest.raises(JobNotFoundError):
            reads.get_or_raise(999)
    finally:
        reads.close()
