"""The job store: one SQLite file in the state directory, shared by the service, the worker process,
the HTTP servers and `restorer jobs`. This module holds the schema and every write; every read (queue
order, positions, listings, stats) lives in daemon/readmodel.py, which JobStore extends.

SQLite runs in WAL mode with a busy timeout, so readers never block the writer and a writer waits
instead of failing with "database is locked". Every write transaction starts with BEGIN IMMEDIATE: a
deferred transaction that reads and then writes can fail at once (the busy timeout does not apply to a
lock upgrade), which is the classic source of "database is locked" in daemons.

The file system is the source of truth for inputs; the store remembers which file versions it has seen.
A file version is (input_path, content_sha256, size_bytes, mtime). A unique index over those, limited
to rows whose original is still in the inbox, makes a second row for the same file impossible however
often it is scanned, restarted or touched. Rules applied by `add`:

- same path and same content, original still in the inbox (touched, rescanned, kept): not a new job;
- same content and the same options under another name (or re-dropped after its original was moved
  away): recognised; with duplicate_content="skip" a row is recorded as `cancelled` with the note
  "skipped: same content as job N", with "process" it is queued with the note "same content as job N"
  (the same photo dropped into a preset folder asks for another result: a new job);
- same name with new content: a new job.

Jobs run in arrival order (id), a higher priority first (readmodel.CLAIM_ORDER); `prioritize` moves a
queued job to the front by giving it a priority above every queued job, so the order listings show is
the order claims take. Nothing is claimed while the queue is paused (the queue_control row, checked in
the claim's own statement; the pause survives a restart). `attempts` counts
the times a worker picked the job up; a worker that dies mid-job leaves it `processing`, and
`requeue_interrupted` puts it back to `queued` (or fails it once it reached max_attempts).

The schema is created on first start and upgraded in place: `schema_version` holds the number of
migrations applied, MIGRATIONS lists them in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import QueuePool

from daemon import fsinfo
from daemon.readmodel import (
    BUSY_TIMEOUT_MS,
    CLAIM_ORDER,
    JOB_COLUMNS,
    Job,
    QueuePause,
    ReadModel,
    StoreError,
    configure_connections,
    job_from_row,
    to_text,
    utcnow,
)

# Where the original input is now. Only 'inbox' rows take part in the "same file" identity.
OriginalPlace = Literal["inbox", "archived", "deleted", "failed_dir"]

# Why a job failed, so the service can act on a class of failures (e.g. requeue "disk-full" ones).
FailureKind = Literal["bad-input", "crash", "disk-full", "error"]

# What a running job's worker is asked to do at its next progress report.
StopRequest = Literal["cancel", "pause"]


class StateOnNetworkFilesystemError(StoreError):
    pass


class SchemaTooNewError(StoreError):
    pass


@dataclass(frozen=True)
class AddResult:
    job: Job
    created: bool  # False: this file version was already known
    duplicate_of: int | None = None  # same content as this job


@dataclass(frozen=True)
class RequeueResult:
    requeued: list[int] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)  # reached max_attempts: the caller moves the input


# ---------------------------------------------------------------------------------------------------
# Schema migrations, applied in order. Never edit one that has shipped: add another.


def _migration_1_jobs(conn: Connection) -> None:
    conn.exec_driver_sql(
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            input_path TEXT NOT NULL,
            content_sha256 TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            mtime REAL NOT NULL,
            preset TEXT,
            options TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'processing', 'done', 'failed', 'cancelled')),
            priority INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            detected_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            heartbeat_at TEXT,
            progress REAL NOT NULL DEFAULT 0,
            stage TEXT,
            output_path TEXT,
            error TEXT,
            report TEXT
        )
        """
    )
    conn.exec_driver_sql("CREATE INDEX jobs_queue ON jobs (state, priority DESC, id)")
    conn.exec_driver_sql("CREATE INDEX jobs_path ON jobs (input_path)")


def _migration_2_originals_and_notes(conn: Connection) -> None:
    # Where the original went, why a job failed, duplicate notes, cancel of a running job, and the
    # "one row per file version in the inbox" guarantee.
    for ddl in (
        "ALTER TABLE jobs ADD COLUMN output_size_bytes INTEGER",
        "ALTER TABLE jobs ADD COLUMN archived_path TEXT",
        "ALTER TABLE jobs ADD COLUMN original TEXT NOT NULL DEFAULT 'inbox'",
        "ALTER TABLE jobs ADD COLUMN failure_kind TEXT",
        "ALTER TABLE jobs ADD COLUMN note TEXT",
        "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
    ):
        conn.exec_driver_sql(ddl)
    # Older rows may hold the same version twice (the bug this migration fixes): keep the first.
    conn.exec_driver_sql(
        """
        UPDATE jobs SET original = 'deleted', note = 'duplicate row merged by schema upgrade'
        WHERE id NOT IN (
            SELECT MIN(id) FROM jobs GROUP BY input_path, content_sha256, size_bytes, mtime
        )
        """
    )
    conn.exec_driver_sql(
        "CREATE UNIQUE INDEX jobs_file_version ON jobs (input_path, content_sha256, size_bytes, mtime) "
        "WHERE original = 'inbox'"
    )
    conn.exec_driver_sql("CREATE INDEX jobs_content ON jobs (content_sha256)")


def _migration_3_throughput_columns(conn: Connection) -> None:
    # A finished job's input megapixels and work seconds as columns (the stats and ETAs read them
    # instead of the report JSON), filled in for the jobs already done, and an index that answers the
    # per-hour, per-day and total sums without reading the rows.
    conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN input_megapixels REAL")
    conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN work_seconds REAL")
    done = conn.exec_driver_sql(
        "SELECT id, report, (julianday(finished_at) - julianday(started_at)) * 86400.0 FROM jobs "
        "WHERE state = 'done' AND report IS NOT NULL"
    ).all()
    for job_id, report, wall_seconds in done:
        megapixels, seconds = throughput_numbers(json.loads(report))
        conn.exec_driver_sql(
            "UPDATE jobs SET input_megapixels = ?, work_seconds = ? WHERE id = ?",
            (megapixels, seconds if seconds is not None else wall_seconds, job_id),
        )
    conn.exec_driver_sql(
        "CREATE INDEX jobs_throughput ON jobs "
        "(state, finished_at, input_megapixels, work_seconds, output_size_bytes)"
    )


def _migration_4_original_path(conn: Connection) -> None:
    # archived_path also held the failed-folder path: it is where the original is now, whatever the place.
    conn.exec_driver_sql("ALTER TABLE jobs RENAME COLUMN archived_path TO original_path")


def _migration_5_publishing(conn: Connection) -> None:
    # "sha256:size" of the output a worker is about to publish, written before the rename, so a re-run
    # after a crash between publish and finish recognises its own output instead of publishing another.
    conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN publishing TEXT")


def _migration_6_queue_control(conn: Connection) -> None:
    # The queue's pause, one row: whether new jobs may start, who paused it, when, and how ("after" the
    # running photo, or "now": running jobs go back to the queue). It survives a restart.
    conn.exec_driver_sql(
        """
        CREATE TABLE queue_control (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            paused INTEGER NOT NULL DEFAULT 0,
            mode TEXT CHECK (mode IN ('after-current', 'now')),
            paused_by TEXT,
            paused_at TEXT
        )
        """
    )
    conn.exec_driver_sql("INSERT INTO queue_control (id, paused) VALUES (1, 0)")


def _migration_7_notifications(conn: Connection) -> None:
    # A trigger records every job that reaches done or failed, whoever wrote it (a local worker
    # process, the Ray publisher, the crash requeue): daemon/notify.py turns these rows into
    # notifications, so no finishing path can forget one. notify_outbox holds what is still to be sent
    # (one row per target and event, deleted in the transaction that learns it was delivered), and
    # notify_batch the running batch (counts since the queue was last empty), so a restart loses none.
    conn.exec_driver_sql(
        "CREATE TABLE notify_events (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, "
        "state TEXT NOT NULL)"
    )
    conn.exec_driver_sql(
        """
        CREATE TRIGGER jobs_notify AFTER UPDATE OF state ON jobs
        WHEN NEW.state IN ('done', 'failed') AND OLD.state IS NOT NEW.state
        BEGIN
            INSERT INTO notify_events (job_id, state) VALUES (NEW.id, NEW.state);
        END
        """
    )
    # Intake records a file it refuses (not an image, too large) as failed from the start.
    conn.exec_driver_sql(
        """
        CREATE TRIGGER jobs_notify_refused AFTER INSERT ON jobs WHEN NEW.state = 'failed'
        BEGIN
            INSERT INTO notify_events (job_id, state) VALUES (NEW.id, NEW.state);
        END
        """
    )
    conn.exec_driver_sql(
        """
        CREATE TABLE notify_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id TEXT NOT NULL UNIQUE,
            target TEXT NOT NULL,
            event TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            next_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT
        )
        """
    )
    conn.exec_driver_sql("CREATE INDEX notify_outbox_due ON notify_outbox (next_at)")
    conn.exec_driver_sql(
        "CREATE TABLE notify_batch (id INTEGER PRIMARY KEY CHECK (id = 1), started_at REAL, "
        "done INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, "
        "folders TEXT NOT NULL DEFAULT '')"
    )
    conn.exec_driver_sql("INSERT INTO notify_batch (id) VALUES (1)")


def _migration_8_cleaned_at(conn: Connection) -> None:
    # When retention (archive_days / failed_days) removed the original: the record stays, marked.
    conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN cleaned_at TEXT")


MIGRATIONS: list[Callable[[Connection], None]] = [
    _migration_1_jobs,
    _migration_2_originals_and_notes,
    _migration_3_throughput_columns,
    _migration_4_original_path,
    _migration_5_publishing,
    _migration_6_queue_control,
    _migration_7_notifications,
    _migration_8_cleaned_at,
]
SCHEMA_VERSION = len(MIGRATIONS)


def throughput_numbers(report: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(input megapixels, work seconds) of a finished job from its report; None where it does not say.

    Work seconds are the pipeline's own clock (report["seconds"]); without one, the caller uses the
    wall time between start and finish.
    """
    report = report or {}
    size = report.get("input_size") or []
    megapixels = size[0] * size[1] / 1e6 if len(size) >= 2 else None
    seconds = report.get("seconds") or None  # 0 means "not measured"
    return megapixels, None if seconds is None else float(seconds)


def _make_engine(db_path: Path) -> Engine:
    # A small pool: each unit of work checks a connection out, so no two threads ever use one at once.
    # The worker is a spawned process with its own JobStore (no connection crosses a fork).
    engine = create_engine(
        f"sqlite:///{db_path}",
        poolclass=QueuePool,
        pool_size=4,
        max_overflow=16,  # the site's thread pools, the intake, the service: never wait for a connection
        connect_args={"check_same_thread": False},
    )
    # NORMAL is crash-safe in WAL mode; a power cut may lose the last commits, and the inbox (the
    # source of truth) still holds those files, so the next scan records them again.
    pragmas = (
        f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
    )
    configure_connections(engine, pragmas)
    return engine


def migrate(engine: Engine, upto: int | None = None) -> int:
    """Apply pending migrations (up to `upto`, for tests of old schemas); return the version reached."""
    target = SCHEMA_VERSION if upto is None else upto
    with engine.execution_options(immediate=True).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.exec_driver_sql("SELECT version FROM schema_version").first()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"the job database has schema version {version}, newer than this restorer understands "
                f"({SCHEMA_VERSION}); upgrade restorer or use another state directory"
            )
        for number in range(version + 1, target + 1):
            MIGRATIONS[number - 1](conn)
        if row is None:
            conn.exec_driver_sql("INSERT INTO schema_version (version) VALUES (?)", (max(version, target),))
        elif target > version:
            conn.exec_driver_sql("UPDATE schema_version SET version = ?", (target,))
        return max(version, target)


class JobStore(ReadModel):
    """The jobs table: every read of the ReadModel, plus the writes. Safe to use from several threads
    and processes at once."""

    def __init__(self, db_path: Path | str, *, mountinfo_file: Path | None = None) -> None:
        db_path = Path(db_path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        mount = fsinfo.mount_of(db_path.parent, mountinfo_file)
        if mount is not None and mount.is_network:
            raise StateOnNetworkFilesystemError(
                f"the job database {db_path} would be on a {mount.network_reason} ({mount.fs_type} at "
                f"{mount.mount_point}); SQLite's WAL needs a local disk: set RESTORER_STATE_DIR to a "
                "local folder (the inbox and outbox may stay on the share)"
            )
        super().__init__(db_path)
        self.schema_version = migrate(self._engine)

    def _open_engine(self) -> Engine:
        return _make_engine(self.db_path)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.execution_options(immediate=True).begin() as conn:
            yield conn

    def transaction(self) -> Any:
        """A write transaction (BEGIN IMMEDIATE) for the tables other daemon modules own (notify_*)."""
        return self._write()

    def reading(self) -> Any:
        """A read-only connection for those tables: no write lock taken."""
        return self._read()

    # -- intake --------------------------------------------------------------------------------------

    def add(
        self,
        input_path: str,
        content_sha256: str,
        size_bytes: int,
        mtime: float,
        *,
        preset: str | None = None,
        options: dict[str, Any] | None = None,
        priority: int = 0,
        duplicate_content: Literal["skip", "process"] = "skip",
        detected_at: datetime | None = None,
        refused: str | None = None,
        input_megapixels: float | None = None,
    ) -> AddResult:
        """Record a stable file version as a job (see the module docstring for the rules).

        refused: why intake refuses the entry (a link, a FIFO, a file too large...): the row is created
        failed (bad-input) with that reason, so no worker can claim it first.
        input_megapixels: the size admission read from the header (the ETA's; finish records the decoded
        size, the same for every file admission takes)."""
        now = utcnow()
        with self._write() as conn:
            same_file = conn.execute(
                text(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE input_path = :p AND content_sha256 = :h "
                    "AND original = 'inbox' ORDER BY id DESC LIMIT 1"
                ),
                {"p": input_path, "h": content_sha256},
            ).first()
            if same_file is not None:
                return AddResult(job_from_row(same_file), created=False)
            # A twin is the same content restored the same way: the same photo dropped into `2x/` asks for
            # another result, so it is a job of its own.
            twin = None
            if refused is None:
                twin = conn.execute(
                    text(
                        f"SELECT {JOB_COLUMNS} FROM jobs WHERE content_sha256 = :h AND options = :options "
                        "AND state IN ('queued', 'processing', 'done') ORDER BY id LIMIT 1"
                    ),
                    {"h": content_sha256, "options": json.dumps(options or {})},
                ).first()
            state, note, finished = "queued", None, None
            if refused is not None:
                state, finished = "failed", now
            if twin is not None:
                twin_job = job_from_row(twin)
                where = f"job {twin_job.id} ({twin_job.input_path})"
                if duplicate_content == "skip":
                    state, note, finished = "cancelled", f"skipped: same content as {where}", now
                else:
                    note = f"same content as {where}"
            result = conn.execute(
                text(
                    "INSERT INTO jobs (input_path, content_sha256, size_bytes, mtime, preset, options, "
                    "state, priority, detected_at, finished_at, note, error, failure_kind, input_megapixels) "
                    "VALUES (:p, :h, :s, :m, :preset, :options, :state, :priority, :detected, :finished, "
                    ":note, :error, :kind, :megapixels) "
                    "ON CONFLICT DO NOTHING RETURNING " + JOB_COLUMNS
                ),
                {
                    "p": input_path,
                    "h": content_sha256,
                    "s": size_bytes,
                    "m": mtime,
                    "preset": preset,
                    "options": json.dumps(options or {}),
                    "state": state,
                    "priority": priority,
                    "detected": to_text(detected_at or now),
                    "finished": to_text(finished),
                    "note": note,
                    "error": refused,
                    "kind": None if refused is None else "bad-input",
                    "megapixels": input_megapixels,
                },
            ).first()
            if result is None:  # the same version raced in from another process
                existing = conn.execute(
                    text(
                        f"SELECT {JOB_COLUMNS} FROM jobs WHERE input_path = :p AND content_sha256 = :h "
                        "AND size_bytes = :s AND mtime = :m AND original = 'inbox'"
                    ),
                    {"p": input_path, "h": content_sha256, "s": size_bytes, "m": mtime},
                ).one()
                return AddResult(job_from_row(existing), created=False)
            return AddResult(
                job_from_row(result),
                created=True,
                duplicate_of=None if twin is None else job_from_row(twin).id,
            )

    def inbox_versions(self) -> dict[str, tuple[int, float]]:
        """input_path -> (size, mtime) of the newest recorded version still in the inbox, so a rescan
        can skip hashing files it already knows."""
        with self._read() as conn:
            rows = conn.execute(
                text("SELECT input_path, size_bytes, mtime FROM jobs WHERE original = 'inbox' ORDER BY id")
            ).all()
        return {row[0]: (row[1], row[2]) for row in rows}

    # -- worker --------------------------------------------------------------------------------------

    def claim_next(self) -> Job | None:
        """Atomically move the next queued job (priority, then arrival) to processing; attempts+1.
        Nothing while the queue is paused (checked in the same statement, so a pause is never raced)."""
        now = to_text(utcnow())
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET state = 'processing', attempts = attempts + 1, started_at = :now, "
                    "heartbeat_at = :now, finished_at = NULL, progress = 0, stage = 'starting', "
                    "error = NULL, failure_kind = NULL WHERE id = (SELECT id FROM jobs WHERE "
                    f"state = 'queued' ORDER BY {CLAIM_ORDER} LIMIT 1) AND state = 'queued' "
                    f"AND NOT {_QUEUE_PAUSED} RETURNING " + JOB_COLUMNS
                ),
                {"now": now},
            ).first()
        return None if row is None else job_from_row(row)

    def update_progress(self, job_id: int, progress: float, stage: str | None) -> StopRequest | None:
        """Record progress (and a heartbeat); returns what the worker is asked to do meanwhile: "cancel"
        (a cancel was requested), "pause" (the queue was paused "now"), else None."""
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET progress = :progress, stage = :stage, heartbeat_at = :now "
                    "WHERE id = :id RETURNING cancel_requested, "
                    "(SELECT paused = 1 AND mode = 'now' FROM queue_control)"
                ),
                {
                    "progress": min(max(progress, 0.0), 1.0),
                    "stage": stage,
                    "now": to_text(utcnow()),
                    "id": job_id,
                },
            ).first()
        if row is None:
            return None
        return "cancel" if row[0] else "pause" if row[1] else None

    def finish(
        self,
        job_id: int,
        output_path: str,
        output_size_bytes: int,
        report: dict[str, Any] | None,
        note: str | None = None,
    ) -> Job:
        """Done: the output is published. Its throughput numbers are kept as columns for the stats."""
        megapixels, seconds = throughput_numbers(report)
        return self._update(
            job_id,
            "state = 'done', progress = 1, stage = NULL, finished_at = :now, output_path = :out, "
            "output_size_bytes = :size, report = :report, error = NULL, failure_kind = NULL, "
            "note = COALESCE(:note, note), input_megapixels = :megapixels, "
            "work_seconds = COALESCE(:seconds, (julianday(:now) - julianday(started_at)) * 86400.0)",
            {
                "now": to_text(utcnow()),
                "out": output_path,
                "size": output_size_bytes,
                "report": _json_or_none(report),
                "note": note,
                "megapixels": megapixels,
                "seconds": seconds,
            },
        )

    def fail(
        self,
        job_id: int,
        error: str,
        kind: FailureKind = "error",
        report: dict[str, Any] | None = None,
    ) -> Job:
        return self._update(
            job_id,
            "state = 'failed', stage = NULL, finished_at = :now, error = :error, failure_kind = :kind, "
            "report = COALESCE(:report, report)",
            {"now": to_text(utcnow()), "error": error, "kind": kind, "report": _json_or_none(report)},
        )

    def mark_cancelled(self, job_id: int, note: str) -> Job:
        """The worker stopped a running job because a cancel was requested (or its input vanished)."""
        return self._update(
            job_id,
            "state = 'cancelled', stage = NULL, finished_at = :now, cancel_requested = 0, note = :note",
            {"now": to_text(utcnow()), "note": note},
        )

    def set_original(
        self, job_id: int, place: OriginalPlace, original_path: str | None = None, note: str | None = None
    ) -> Job:
        """Record where the original went (archived/deleted/failed_dir); a note if the move failed."""
        return self._update(
            job_id,
            f"original = :place, original_path = COALESCE(:moved_to, original_path), {_APPEND_NOTE}",
            {"place": place, "moved_to": original_path, "note": note},
        )

    def past_retention(self, state: str, place: str, finished_before: datetime, limit: int) -> list[Job]:
        """Jobs in `state` whose original is in `place` (archived / failed_dir) and that finished before
        `finished_before`, oldest first: what retention may clean up."""
        with self._read() as conn:
            rows = conn.execute(
                text(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = :state AND original = :place "
                    "AND cleaned_at IS NULL AND finished_at < :before ORDER BY finished_at LIMIT :limit"
                ),
                {"state": state, "place": place, "before": to_text(finished_before), "limit": limit},
            ).all()
        return [job_from_row(row) for row in rows]

    def mark_cleaned(self, job_id: int, place: str, when: datetime, note: str) -> Job:
        """The original was removed by retention: the record stays, with when and why."""
        return self._update(
            job_id,
            f"original = 'deleted', cleaned_at = :when, {_APPEND_NOTE}",
            {"when": to_text(when), "note": note},
            only_if=f"original = '{place}'" if place in ("archived", "failed_dir") else "0",
        )

    def add_note(self, job_id: int, note: str) -> Job:
        return self._update(job_id, _APPEND_NOTE, {"note": note})

    def requeue(self, job_id: int, *, refund_attempt: bool) -> Job:
        """Back to queued, e.g. on a graceful stop (refund_attempt: the interruption was not its fault)."""
        return self._update(
            job_id,
            "state = 'queued', progress = 0, stage = NULL, started_at = NULL, "
            "attempts = CASE WHEN :refund THEN MAX(attempts - 1, 0) ELSE attempts END",
            {"refund": int(refund_attempt)},
            only_if="state = 'processing'",
        )

    def requeue_first(self, job_id: int) -> Job:
        """A running job stopped by a pause "now": back to the queue, first in line, attempt refunded."""
        return self._update(
            job_id,
            "state = 'queued', progress = 0, stage = NULL, started_at = NULL, "
            f"attempts = MAX(attempts - 1, 0), priority = {_FRONT_PRIORITY}",
            {},
            only_if="state = 'processing'",
        )

    def requeue_interrupted(self, max_attempts: int, job_id: int | None = None) -> RequeueResult:
        """Jobs left `processing` by a dead worker (all of them at start, or one after a crash):
        back to queued, or failed once they used max_attempts."""
        scope = "" if job_id is None else " AND id = :id"
        params: dict[str, Any] = {"max": max_attempts, "id": job_id, "now": to_text(utcnow())}
        with self._write() as conn:
            # A cancel requested while the worker died is honoured rather than run again.
            conn.execute(
                text(
                    "UPDATE jobs SET state = 'cancelled', stage = NULL, finished_at = :now, "
                    "cancel_requested = 0 WHERE state = 'processing' AND cancel_requested = 1" + scope
                ),
                params,
            )
            failed = conn.execute(
                text(
                    "UPDATE jobs SET state = 'failed', stage = NULL, finished_at = :now, "
                    "failure_kind = 'crash', error = 'the worker stopped ' || attempts || "
                    "' times while restoring this file (crash, hang or out of memory); it is given up "
                    "after ' || :max || ' attempts. Check the file opens in an image viewer, then run "
                    "restorer jobs retry ' || id || ' to try again' "
                    "WHERE state = 'processing' AND attempts >= :max" + scope + " RETURNING " + JOB_COLUMNS
                ),
                params,
            ).all()
            requeued = conn.execute(
                text(
                    "UPDATE jobs SET state = 'queued', progress = 0, stage = NULL, started_at = NULL "
                    "WHERE state = 'processing'" + scope + " RETURNING id"
                ),
                params,
            ).all()
        return RequeueResult(
            requeued=sorted(r[0] for r in requeued), failed=[job_from_row(r) for r in failed]
        )

    def requeue_failed(self, kind: FailureKind, note: str) -> list[int]:
        """Failed jobs of one kind back to queued (e.g. disk-full ones once space returned)."""
        with self._write() as conn:
            rows = conn.execute(
                text(
                    "UPDATE jobs SET state = 'queued', error = NULL, failure_kind = NULL, progress = 0, "
                    f"finished_at = NULL, {_APPEND_NOTE} "
                    "WHERE state = 'failed' AND failure_kind = :kind AND original = 'inbox' RETURNING id"
                ),
                {"kind": kind, "note": note},
            ).all()
        return sorted(r[0] for r in rows)

    # -- operator actions (idempotent) -----------------------------------------------------------------

    def retry(self, job_id: int) -> Job:
        """failed/cancelled/done -> queued with a fresh attempt count; queued/processing unchanged."""
        return self._update(
            job_id,
            "state = 'queued', attempts = 0, error = NULL, failure_kind = NULL, progress = 0, stage = NULL, "
            "started_at = NULL, finished_at = NULL, cancel_requested = 0, publishing = NULL",
            {},
            only_if="state IN ('failed', 'cancelled', 'done')",
        )

    def note_publishing(self, job_id: int, fingerprint: str) -> None:
        """Record the output about to be published ("sha256:size"), before it gets its name."""
        with self._write() as conn:
            conn.execute(
                text("UPDATE jobs SET publishing = :f WHERE id = :id"), {"f": fingerprint, "id": job_id}
            )

    def publishing_of(self, job_id: int) -> str | None:
        """The output a run of this job published or was publishing when it stopped (see note_publishing)."""
        with self._read() as conn:
            row = conn.execute(text("SELECT publishing FROM jobs WHERE id = :id"), {"id": job_id}).first()
        return None if row is None else row[0]

    def cancel(self, job_id: int) -> Job:
        """queued -> cancelled; processing -> cancel requested (the worker stops it); else unchanged."""
        return self._update(
            job_id,
            "state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END, "
            "finished_at = CASE state WHEN 'queued' THEN :now ELSE finished_at END, "
            "cancel_requested = CASE state WHEN 'processing' THEN 1 ELSE cancel_requested END",
            {"now": to_text(utcnow())},
            only_if="state IN ('queued', 'processing')",
        )

    def set_queued_options(self, job_id: int, options: dict[str, Any]) -> Job:
        """A queued job's restore options replaced (an upload's model choice, when the watcher recorded
        the file first); a job a worker has claimed, or that ended, is unchanged: it runs or ran with the
        options it had when it was claimed."""
        return self._update(
            job_id, "options = :options", {"options": json.dumps(options)}, "state = 'queued'"
        )

    def prioritize(self, job_id: int) -> Job:
        """A queued job to the front of the queue (the claim order's priority above every other queued
        job); a job already first, or not queued, is unchanged."""
        return self._update(
            job_id,
            f"priority = {_FRONT_PRIORITY}",
            {},
            only_if=f"state = 'queued' AND EXISTS (SELECT 1 FROM jobs AS other WHERE {_AHEAD_OF_THIS})",
        )

    # -- the queue's pause (one row, survives a restart) -----------------------------------------------

    def pause_queue(self, by: str, *, now: bool = False) -> QueuePause:
        """No new job starts until resume_queue. now: running jobs go back to the queue, first in line
        (each worker does it at its next progress report). Pausing again keeps who and when, and may
        turn an "after-current" pause into "now"."""
        with self._write() as conn:
            conn.execute(
                text(
                    "UPDATE queue_control SET mode = CASE WHEN :now OR mode = 'now' THEN 'now' "
                    "ELSE 'after-current' END, paused_by = CASE paused WHEN 1 THEN paused_by ELSE :by END, "
                    "paused_at = CASE paused WHEN 1 THEN paused_at ELSE :at END, paused = 1"
                ),
                {"now": int(now), "by": by[:200], "at": to_text(utcnow())},
            )
        return self.queue_pause()

    def resume_queue(self) -> QueuePause:
        with self._write() as conn:
            conn.exec_driver_sql(
                "UPDATE queue_control SET paused = 0, mode = NULL, paused_by = NULL, paused_at = NULL"
            )
        return self.queue_pause()

    def _update(self, job_id: int, assignments: str, params: dict[str, Any], only_if: str = "1") -> Job:
        """UPDATE one job and return it as it is now. When `only_if` (a condition on its state) does
        not hold, the job is returned unchanged: that is what makes the operator actions idempotent."""
        with self._write() as conn:
            row = conn.execute(
                text(f"UPDATE jobs SET {assignments} WHERE id = :id AND {only_if} RETURNING {JOB_COLUMNS}"),
                {**params, "id": job_id},
            ).first()
        return self.get_or_raise(job_id) if row is None else job_from_row(row)


# The queue is paused (see pause_queue); claim_next checks it in its own statement.
_QUEUE_PAUSED = "EXISTS (SELECT 1 FROM queue_control WHERE paused = 1)"
# A priority that puts a job before every queued job (claim order: priority DESC, then id).
_FRONT_PRIORITY = "(SELECT COALESCE(MAX(priority), 0) + 1 FROM jobs WHERE state = 'queued')"
# Another queued job runs before this one (inside an UPDATE of jobs: `jobs` is the row updated).
_AHEAD_OF_THIS = (
    "other.state = 'queued' AND (other.priority > jobs.priority OR "
    "(other.priority = jobs.priority AND other.id < jobs.id))"
)

# Appends :note to a job's note ("; " between notes); a NULL :note leaves it as it is.
_APPEND_NOTE = (
    "note = CASE WHEN :note IS NULL THEN note WHEN note IS NULL THEN :note ELSE note || '; ' || :note END"
)


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)
