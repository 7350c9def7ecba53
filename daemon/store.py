"""The job store: one SQLite file in the state directory, shared by the service, the worker process,
the HTTP servers and `restorer jobs`.

SQLite runs in WAL mode with a busy timeout, so readers never block the writer and a writer waits
instead of failing with "database is locked". Every write transaction starts with BEGIN IMMEDIATE: a
deferred transaction that reads and then writes can fail at once (the busy timeout does not apply to a
lock upgrade), which is the classic source of "database is locked" in daemons.

The file system is the source of truth for inputs; the store remembers which file versions it has seen.
A file version is (input_path, content_sha256, size_bytes, mtime). A unique index over those, limited
to rows whose original is still in the inbox, makes a second row for the same file impossible however
often it is scanned, restarted or touched. Rules applied by `add`:

- same path and same content, original still in the inbox (touched, rescanned, kept): not a new job;
- same content under another name (or re-dropped after its original was moved away): recognised; with
  duplicate_content="skip" a row is recorded as `cancelled` with the note "skipped: same content as
  job N", with "process" it is queued with the note "same content as job N";
- same name with new content: a new job.

Jobs run in arrival order (id), a higher priority first. `attempts` counts the times a worker picked the
job up; a worker that dies mid-job leaves it `processing`, and `requeue_interrupted` puts it back to
`queued` (or fails it once it reached max_attempts).

The schema is created on first start and upgraded in place: `schema_version` holds the number of
migrations applied, MIGRATIONS lists them in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.pool import QueuePool

from daemon import fsinfo

JobState = Literal["queued", "processing", "done", "failed", "cancelled"]
STATES: tuple[str, ...] = ("queued", "processing", "done", "failed", "cancelled")
ACTIVE_STATES: tuple[str, ...] = ("queued", "processing")

# Where the original input is now. Only 'inbox' rows take part in the "same file" identity.
OriginalPlace = Literal["inbox", "archived", "deleted", "failed_dir"]

# Why a job failed, so the service can act on a class of failures (e.g. requeue "disk-full" ones).
FailureKind = Literal["bad-input", "crash", "disk-full", "error"]

BUSY_TIMEOUT_MS = 30_000


class StoreError(Exception):
    """The job store cannot be used; str(e) says why in one line."""


class StateOnNetworkFilesystemError(StoreError):
    pass


class SchemaTooNewError(StoreError):
    pass


class JobNotFoundError(StoreError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _to_text(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _to_datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class Job:
    id: int
    input_path: str
    content_sha256: str
    size_bytes: int
    mtime: float
    preset: str | None
    options: dict[str, Any]
    state: str
    priority: int
    attempts: int
    detected_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    progress: float
    stage: str | None
    output_path: str | None
    output_size_bytes: int | None
    archived_path: str | None
    original: str
    error: str | None
    failure_kind: str | None
    report: dict[str, Any] | None
    note: str | None
    cancel_requested: bool

    @property
    def seconds(self) -> float | None:
        """Wall time of the last run, if it finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 UTC strings."""
        data: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            data[name] = _to_text(value) if isinstance(value, datetime) else value
        data["seconds"] = self.seconds
        return data


@dataclass(frozen=True)
class AddResult:
    job: Job
    created: bool  # False: this file version was already known
    duplicate_of: int | None = None  # same content as this job


@dataclass(frozen=True)
class RequeueResult:
    requeued: list[int] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)  # reached max_attempts: the caller moves the input


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: int | None  # pass back as `cursor` for the next page; None at the end


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


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1_jobs, _migration_2_originals_and_notes]
SCHEMA_VERSION = len(MIGRATIONS)


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

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL is crash-safe in WAL mode; a power cut may lose the last commits, and the inbox (the
        # source of truth) still holds those files, so the next scan records them again.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

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


# Every column of a Job, in one place, so every query (the store's and status_site's) builds the same Job.
JOB_COLUMNS = (
    "id, input_path, content_sha256, size_bytes, mtime, preset, options, state, priority, attempts, "
    "detected_at, started_at, finished_at, heartbeat_at, progress, stage, output_path, output_size_bytes, "
    "archived_path, original, error, failure_kind, report, note, cancel_requested"
)


def job_from_row(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        input_path=m["input_path"],
        content_sha256=m["content_sha256"],
        size_bytes=m["size_bytes"],
        mtime=m["mtime"],
        preset=m["preset"],
        options=json.loads(m["options"] or "{}"),
        state=m["state"],
        priority=m["priority"],
        attempts=m["attempts"],
        detected_at=_to_datetime(m["detected_at"]),
        started_at=_to_datetime(m["started_at"]),
        finished_at=_to_datetime(m["finished_at"]),
        heartbeat_at=_to_datetime(m["heartbeat_at"]),
        progress=m["progress"],
        stage=m["stage"],
        output_path=m["output_path"],
        output_size_bytes=m["output_size_bytes"],
        archived_path=m["archived_path"],
        original=m["original"],
        error=m["error"],
        failure_kind=m["failure_kind"],
        report=None if m["report"] is None else json.loads(m["report"]),
        note=m["note"],
        cancel_requested=bool(m["cancel_requested"]),
    )


class JobStore:
    """All access to the jobs table. Safe to use from several threads and processes at once."""

    def __init__(self, db_path: Path | str, *, mountinfo_file: Path | None = None) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        mount = fsinfo.mount_of(self.db_path.parent, mountinfo_file)
        if mount is not None and mount.is_network:
            raise StateOnNetworkFilesystemError(
                f"the job database {self.db_path} would be on a network filesystem ({mount.fs_type} at "
                f"{mount.mount_point}); SQLite's WAL needs a local disk: set RESTORER_STATE_DIR to a "
                "local folder (the inbox and outbox may stay on the share)"
            )
        self._engine = _make_engine(self.db_path)
        self.schema_version = migrate(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.execution_options(immediate=True).begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

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
    ) -> AddResult:
        """Record a stable file version as a job (see the module docstring for the rules)."""
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
            twin = conn.execute(
                text(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE content_sha256 = :h "
                    "AND state IN ('queued', 'processing', 'done') ORDER BY id LIMIT 1"
                ),
                {"h": content_sha256},
            ).first()
            state, note, finished = "queued", None, None
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
                    "state, priority, detected_at, finished_at, note) VALUES (:p, :h, :s, :m, :preset, "
                    ":options, :state, :priority, :detected, :finished, :note) "
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
                    "detected": _to_text(detected_at or now),
                    "finished": _to_text(finished),
                    "note": note,
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
        """Atomically move the next queued job (priority, then arrival) to processing; attempts+1."""
        now = _to_text(utcnow())
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET state = 'processing', attempts = attempts + 1, started_at = :now, "
                    "heartbeat_at = :now, finished_at = NULL, progress = 0, stage = 'starting', "
                    "error = NULL, failure_kind = NULL WHERE id = (SELECT id FROM jobs WHERE "
                    "state = 'queued' ORDER BY priority DESC, id LIMIT 1) AND state = 'queued' "
                    "RETURNING " + JOB_COLUMNS
                ),
                {"now": now},
            ).first()
        return None if row is None else job_from_row(row)

    def heartbeat(self, job_id: int) -> None:
        with self._write() as conn:
            conn.execute(
                text("UPDATE jobs SET heartbeat_at = :now WHERE id = :id"),
                {"now": _to_text(utcnow()), "id": job_id},
            )

    def update_progress(self, job_id: int, progress: float, stage: str | None) -> bool:
        """Record progress (and a heartbeat); returns True if a cancel was requested meanwhile."""
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET progress = :progress, stage = :stage, heartbeat_at = :now "
                    "WHERE id = :id RETURNING cancel_requested"
                ),
                {
                    "progress": min(max(progress, 0.0), 1.0),
                    "stage": stage,
                    "now": _to_text(utcnow()),
                    "id": job_id,
                },
            ).first()
        return bool(row and row[0])

    def finish(
        self,
        job_id: int,
        output_path: str,
        output_size_bytes: int,
        report: dict[str, Any] | None,
        note: str | None = None,
    ) -> Job:
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET state = 'done', progress = 1, stage = NULL, finished_at = :now, "
                    "output_path = :out, output_size_bytes = :size, report = :report, error = NULL, "
                    "failure_kind = NULL, note = COALESCE(:note, note) WHERE id = :id "
                    "RETURNING " + JOB_COLUMNS
                ),
                {
                    "now": _to_text(utcnow()),
                    "out": output_path,
                    "size": output_size_bytes,
                    "report": None if report is None else json.dumps(report),
                    "note": note,
                    "id": job_id,
                },
            ).first()
        return self._found(row, job_id)

    def fail(
        self,
        job_id: int,
        error: str,
        kind: FailureKind = "error",
        report: dict[str, Any] | None = None,
    ) -> Job:
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET state = 'failed', stage = NULL, finished_at = :now, error = :error, "
                    "failure_kind = :kind, report = COALESCE(:report, report) WHERE id = :id "
                    "RETURNING " + JOB_COLUMNS
                ),
                {
                    "now": _to_text(utcnow()),
                    "error": error,
                    "kind": kind,
                    "report": None if report is None else json.dumps(report),
                    "id": job_id,
                },
            ).first()
        return self._found(row, job_id)

    def mark_cancelled(self, job_id: int, note: str) -> Job:
        """The worker stopped a running job because a cancel was requested (or its input vanished)."""
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET state = 'cancelled', stage = NULL, finished_at = :now, "
                    "cancel_requested = 0, note = :note WHERE id = :id RETURNING " + JOB_COLUMNS
                ),
                {"now": _to_text(utcnow()), "note": note, "id": job_id},
            ).first()
        return self._found(row, job_id)

    def set_original(
        self, job_id: int, place: OriginalPlace, archived_path: str | None = None, note: str | None = None
    ) -> Job:
        """Record where the original went (archived/deleted/failed_dir); a note if the move failed."""
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET original = :place, archived_path = COALESCE(:archived, archived_path), "
                    "note = CASE WHEN :note IS NULL THEN note WHEN note IS NULL THEN :note "
                    "ELSE note || '; ' || :note END WHERE id = :id RETURNING " + JOB_COLUMNS
                ),
                {"place": place, "archived": archived_path, "note": note, "id": job_id},
            ).first()
        return self._found(row, job_id)

    def add_note(self, job_id: int, note: str) -> Job:
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET note = CASE WHEN note IS NULL THEN :note ELSE note || '; ' || :note END "
                    "WHERE id = :id RETURNING " + JOB_COLUMNS
                ),
                {"note": note, "id": job_id},
            ).first()
        return self._found(row, job_id)

    def requeue(self, job_id: int, *, refund_attempt: bool) -> Job:
        """Back to queued, e.g. on a graceful stop (refund_attempt: the interruption was not its fault)."""
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET state = 'queued', progress = 0, stage = NULL, started_at = NULL, "
                    "attempts = CASE WHEN :refund THEN MAX(attempts - 1, 0) ELSE attempts END "
                    "WHERE id = :id AND state = 'processing' RETURNING " + JOB_COLUMNS
                ),
                {"refund": int(refund_attempt), "id": job_id},
            ).first()
        return self.get_or_raise(job_id) if row is None else job_from_row(row)

    def requeue_interrupted(self, max_attempts: int, job_id: int | None = None) -> RequeueResult:
        """Jobs left `processing` by a dead worker (all of them at start, or one after a crash):
        back to queued, or failed once they used max_attempts."""
        scope = "" if job_id is None else " AND id = :id"
        params: dict[str, Any] = {"max": max_attempts, "id": job_id, "now": _to_text(utcnow())}
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
                    "finished_at = NULL, note = CASE WHEN note IS NULL THEN :note ELSE note || '; ' || :note "
                    "END WHERE state = 'failed' AND failure_kind = :kind AND original = 'inbox' RETURNING id"
                ),
                {"kind": kind, "note": note},
            ).all()
        return sorted(r[0] for r in rows)

    # -- operator actions (idempotent) -----------------------------------------------------------------

    def retry(self, job_id: int) -> Job:
        """failed/cancelled/done -> queued with a fresh attempt count; queued/processing unchanged."""
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET state = 'queued', attempts = 0, error = NULL, failure_kind = NULL, "
                    "progress = 0, stage = NULL, started_at = NULL, finished_at = NULL, "
                    "cancel_requested = 0 WHERE id = :id AND state IN ('failed', 'cancelled', 'done') "
                    "RETURNING " + JOB_COLUMNS
                ),
                {"id": job_id},
            ).first()
        return self.get_or_raise(job_id) if row is None else job_from_row(row)

    def cancel(self, job_id: int) -> Job:
        """queued -> cancelled; processing -> cancel requested (the worker stops it); else unchanged."""
        now = _to_text(utcnow())
        with self._write() as conn:
            row = conn.execute(
                text(
                    "UPDATE jobs SET state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END, "
                    "finished_at = CASE state WHEN 'queued' THEN :now ELSE finished_at END, "
                    "cancel_requested = CASE state WHEN 'processing' THEN 1 ELSE cancel_requested END "
                    "WHERE id = :id AND state IN ('queued', 'processing') RETURNING " + JOB_COLUMNS
                ),
                {"id": job_id, "now": now},
            ).first()
        return self.get_or_raise(job_id) if row is None else job_from_row(row)

    def set_priority(self, job_id: int, priority: int) -> Job:
        with self._write() as conn:
            row = conn.execute(
                text("UPDATE jobs SET priority = :p WHERE id = :id RETURNING " + JOB_COLUMNS),
                {"p": priority, "id": job_id},
            ).first()
        return self._found(row, job_id)

    # -- reads ---------------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._read() as conn:
            row = conn.execute(text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id"), {"id": job_id}).first()
        return None if row is None else job_from_row(row)

    def get_or_raise(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return job

    def _found(self, row: Any, job_id: int) -> Job:
        if row is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return job_from_row(row)

    def list(
        self,
        state: str | list[str] | None = None,
        limit: int = 50,
        cursor: int | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> JobPage:
        """A page of jobs by id (newest first by default); `cursor` is the previous page's next_cursor."""
        states = [state] if isinstance(state, str) else list(state or [])
        unknown = [s for s in states if s not in STATES]
        if unknown:
            raise ValueError(f"unknown job state {unknown[0]!r}; known: {', '.join(STATES)}")
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        clauses, params = [], {"limit": max(1, min(limit, 1000)) + 1}
        if states:
            names = [f":s{i}" for i in range(len(states))]
            clauses.append(f"state IN ({', '.join(names)})")
            params.update({f"s{i}": s for i, s in enumerate(states)})
        if cursor is not None:
            clauses.append("id < :cursor" if order == "desc" else "id > :cursor")
            params["cursor"] = cursor
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                text(f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id {order.upper()} LIMIT :limit"),
                params,
            ).all()
        jobs = [job_from_row(r) for r in rows[: params["limit"] - 1]]
        more = len(rows) > len(jobs)
        return JobPage(jobs=jobs, next_cursor=jobs[-1].id if more and jobs else None)

    def queued_in_order(self, limit: int = 100) -> list[Job]:
        """The queue as the worker will take it."""
        with self._read() as conn:
            rows = conn.execute(
                text(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' "
                    "ORDER BY priority DESC, id LIMIT :limit"
                ),
                {"limit": limit},
            ).all()
        return [job_from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(text("SELECT state, COUNT(*) FROM jobs GROUP BY state")).all()
        counts = dict.fromkeys(STATES, 0)
        counts.update({state: n for state, n in rows})
        return counts

    def queue_position(self, job_id: int) -> int | None:
        """1 = next to run; 0 = running now; None = not waiting (done, failed, cancelled, unknown)."""
        with self._read() as conn:
            row = conn.execute(
                text("SELECT state, priority FROM jobs WHERE id = :id"), {"id": job_id}
            ).first()
            if row is None or row[0] not in ACTIVE_STATES:
                return None
            if row[0] == "processing":
                return 0
            ahead = conn.execute(
                text(
                    "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND "
                    "(priority > :p OR (priority = :p AND id < :id))"
                ),
                {"p": row[1], "id": job_id},
            ).scalar_one()
        return int(ahead) + 1

    def stats(self, recent: int = 20) -> dict[str, Any]:
        """Counts, recent throughput and a queue ETA for the page and the API."""
        counts = self.counts()
        hour_ago = _to_text(utcnow() - timedelta(hours=1))
        with self._read() as conn:
            recent_rows = conn.execute(
                text(
                    "SELECT started_at, finished_at FROM jobs WHERE state = 'done' "
                    "AND started_at IS NOT NULL AND finished_at IS NOT NULL ORDER BY id DESC LIMIT :n"
                ),
                {"n": recent},
            ).all()
            done_last_hour = conn.execute(
                text("SELECT COUNT(*) FROM jobs WHERE state = 'done' AND finished_at >= :t"), {"t": hour_ago}
            ).scalar_one()
            running = conn.execute(
                text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'processing' ORDER BY id LIMIT 1")
            ).first()
        durations = [
            (_to_datetime(f) - _to_datetime(s)).total_seconds()  # type: ignore[operator]
            for s, f in recent_rows
        ]
        average = sum(durations) / len(durations) if durations else None
        running_job = None if running is None else job_from_row(running)
        eta = None
        if average is not None:
            remaining_current = 0.0 if running_job is None else average * (1.0 - running_job.progress)
            eta = counts["queued"] * average + remaining_current
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "done_last_hour": int(done_last_hour),
            "average_seconds": average,
            "queue_eta_seconds": eta,
            "running_job_id": None if running_job is None else running_job.id,
        }
