"""Retention (issue 19 item 3): archive_days / failed_days delete archived originals and failed files past
their age, keep and mark the job records, and never touch anything else. Real folders, a real SQLite
store, the real archive/failed moves (daemon.originals); the clock is injected: `sweep(..., now)`."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from daemon import originals, retention
from daemon.settings import Settings
from daemon.store import Job, JobStore
from status_site.api import job_json
from tests.daemon_processors import fake_photo
from tests.support.settings import make_settings

DAY = timedelta(days=1)


class Place:
    """A daemon's folders and store, and photos that went through them for real."""

    def __init__(self, root: Path, **overrides: object) -> None:
        self.settings: Settings = make_settings(root, **overrides)
        self.store = JobStore(self.settings.db_path)
        self.inbox = Path(self.settings.inbox)
        self.archive = Path(self.settings.archive_dir)
        self.failed = Path(self.settings.failed_dir)
        self.outbox = Path(self.settings.outbox)

    def arrive(self, name: str, body: bytes) -> Job:
        path = self.inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fake_photo(body))
        status = path.stat()
        data = path.read_bytes()
        return self.store.add(name, hashlib.sha256(data).hexdigest(), status.st_size, status.st_mtime).job

    def restored(self, name: str, body: bytes) -> Job:
        """Restored and published, its original archived (originals = "archive")."""
        job = self.arrive(name, body)
        claimed = self.store.claim_next()
        assert claimed is not None and claimed.id == job.id
        (self.outbox / name).parent.mkdir(parents=True, exist_ok=True)
        (self.outbox / name).write_bytes(b"restored " + body)
        done = self.store.finish(job.id, name, len(body) + 9, None)
        seen = originals.read(originals.location(self.settings, done))  # type: ignore[arg-type]
        return originals.dispose(self.settings, self.store, done, seen)

    def failed_job(self, name: str, body: bytes) -> Job:
        job = self.arrive(name, body)
        assert self.store.claim_next() is not None
        failed = self.store.fail(job.id, "not a photo")
        return originals.move_to_failed(self.settings, self.store, failed, "not a photo", "drop a photo")

    def close(self) -> None:
        self.store.close()


def test_archived_originals_past_archive_days_are_deleted_and_their_records_kept_and_marked(
    tmp_path: Path,
) -> None:
    place = Place(tmp_path, archive_days=30)
    old = place.restored("album/old.jpg", b"restored long ago")
    assert old.original == "archived" and (place.archive / "album/old.jpg").is_file()
    now = datetime.now(UTC)

    assert retention.sweep(place.settings, place.store, now + 29 * DAY) == []
    assert (place.archive / "album/old.jpg").is_file()

    assert retention.sweep(place.settings, place.store, now + 31 * DAY) == [old.id]
    assert not (place.archive / "album/old.jpg").exists()
    job = place.store.get_or_raise(old.id)
    assert job.state == "done" and job.original == "deleted" and job.original_path == "album/old.jpg"
    assert job.cleaned_at == now + 31 * DAY
    assert job.note is not None and "archived original removed after 30 days (retention)" in job.note
    shown = job_json(job, None, None)
    assert shown["cleaned_at"] is not None and shown["input"]["original"] == "deleted"
    assert "removed by retention" in originals.absence_reason(job)
    assert (place.outbox / "album/old.jpg").read_bytes() == b"restored restored long ago"  # outputs stay
    assert retention.sweep(place.settings, place.store, now + 400 * DAY) == []  # once only
    place.close()


def test_failed_files_past_failed_days_go_with_their_error_note(tmp_path: Path) -> None:
    place = Place(tmp_path, failed_days=7)
    job = place.failed_job("bad.jpg", b"broken")
    assert (place.failed / "bad.jpg").is_file() and (place.failed / "bad.jpg.error.txt").is_file()
    assert retention.sweep(place.settings, place.store, datetime.now(UTC) + 8 * DAY) == [job.id]
    assert not (place.failed / "bad.jpg").exists() and not (place.failed / "bad.jpg.error.txt").exists()
    marked = place.store.get_or_raise(job.id)
    assert marked.state == "failed" and marked.cleaned_at is not None
    assert marked.note is not None and "failed file removed after 7 days" in marked.note
    place.close()


def test_nothing_that_was_not_restored_is_ever_deleted_whatever_the_age(tmp_path: Path) -> None:
    # archive_days only: failed files stay; queued photos in the inbox, outputs and kept originals stay.
    place = Place(tmp_path, archive_days=1)
    waiting = place.arrive("waiting.jpg", b"still queued")
    failed = place.failed_job("bad.jpg", b"broken")
    place.settings = place.settings.model_copy(update={"originals": "keep"})
    kept = place.restored("kept.jpg", b"kept in the inbox")
    (place.outbox / "someone-elses.jpg").write_bytes(b"an output")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())

    assert retention.sweep(place.settings, place.store, datetime.now(UTC) + 10_000 * DAY) == []
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before
    for job_id in (waiting.id, failed.id, kept.id):
        assert place.store.get_or_raise(job_id).cleaned_at is None
    place.close()


def test_a_file_that_took_the_archived_originals_place_is_left_alone(tmp_path: Path) -> None:
    place = Place(tmp_path, archive_days=1)
    swapped = place.restored("a.jpg", b"the original")
    linked = place.restored("b.jpg", b"another original")
    os.unlink(place.archive / "a.jpg")
    (place.archive / "a.jpg").write_bytes(fake_photo(b"someone else's"))  # another file, same name
    precious = tmp_path / "precious.jpg"
    precious.write_bytes(fake_photo(b"another original"))
    os.unlink(place.archive / "b.jpg")
    os.symlink(precious, place.archive / "b.jpg")  # a link where the original was

    assert retention.sweep(place.settings, place.store, datetime.now(UTC) + 2 * DAY) == []
    assert (place.archive / "a.jpg").read_bytes() == fake_photo(b"someone else's")
    assert (place.archive / "b.jpg").is_symlink() and precious.read_bytes() == fake_photo(b"another original")
    for job_id in (swapped.id, linked.id):
        job = place.store.get_or_raise(job_id)
        assert job.cleaned_at is None and job.note is not None and "retention left" in job.note
    # Said once: the records no longer point there, so later sweeps do not look again.
    assert place.store.past_retention("done", "archived", datetime.now(UTC) + 9 * DAY, 10) == []
    place.close()


def test_restorer_serve_sweeps_at_start_and_keeps_the_record(tmp_path: Path) -> None:
    """End to end: a photo restored and archived by one `restorer serve`; the next start's sweep, the
    archive_days (here 0.1 s) past, removes the archived original and marks the job; the output stays."""
    from tests.support.serve import ServeProcess
    from tests.support.waiting import wait_for

    for folder in ("inbox", "outbox", "failed", "archive", "state"):
        (tmp_path / folder).mkdir()
    env = {"RESTORER_ARCHIVE_DAYS": str(0.1 / 86400)}
    first = ServeProcess(tmp_path, env)
    try:
        first.wait_ready()
        (tmp_path / "inbox" / "photo.jpg").write_bytes(fake_photo(b"a photo"))
        wait_for(lambda: (tmp_path / "archive" / "photo.jpg").exists(), timeout=60)
        assert first.terminate() == 0
    finally:
        first.cleanup()
    second = ServeProcess(tmp_path, env)
    try:
        second.wait_ready()
        wait_for(lambda: not (tmp_path / "archive" / "photo.jpg").exists(), timeout=30)
        assert "retention removed the originals of 1 job(s)" in second.output()
    finally:
        second.terminate()
        second.cleanup()
    store = JobStore(tmp_path / "state" / "jobs.sqlite3")
    (job,) = store.list(limit=10).jobs
    assert job.state == "done" and job.cleaned_at is not None and job.original == "deleted"
    assert job.output_path is not None and (tmp_path / "outbox" / job.output_path).is_file()
    store.close()
