"""The read model: every question asked of the jobs table, answered in one place.

What a job row looks like (`Job`), the queue order, a job's place in the queue, listings with keyset
paging and the throughput statistics are defined here once. `ReadModel` opens the store's SQLite file
read-only (mode=ro and query_only), so the status site, its metrics and its ETAs can never write
through it; in WAL mode its readers never wait for the worker's writes. `JobStore` (daemon/store.py)
is a ReadModel plus the writes, so `restorer jobs`, the service and the page ask the same questions
with the same SQL.

A finished job's throughput numbers (input megapixels, work seconds) are columns written by
`JobStore.finish`, so no query here reads the report JSON.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, overload

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.pool import QueuePool

STATES: tuple[str, ...] = ("queued", "processing", "done", "failed", "cancelled")
ACTIVE_STATES: tuple[str, ...] = ("queued", "processing")
Order = Literal["newest", "oldest", "queue"]
ORDERS: tuple[str, ...] = ("newest", "oldest", "queue")

# The order the worker claims queued jobs in: a higher priority first, then arrival. The jobs_queue
# index (state, priority DESC, id) serves it.
CLAIM_ORDER = "priority DESC, id"
# The queue as people see it: the running job(s) first, then the queued ones in claim order.
_RUNNING_FIRST = "(CASE state WHEN 'processing' THEN 0 ELSE 1 END)"
QUEUE_ORDER = f"{_RUNNING_FIRST}, {CLAIM_ORDER}"
# Queued jobs claimed before the job with priority :p and id :id (the same order, as a predicate).
_QUEUED_AHEAD = "state = 'queued' AND (priority > :p OR (priority = :p AND id < :id))"
# Rows after a queue-order cursor (rank, priority, id): the same order again, for keyset paging.
_AFTER_QUEUE_CURSOR = (
    f"({_RUNNING_FIRST} > :rank OR ({_RUNNING_FIRST} = :rank AND "
    "(priority < :prio OR (priority = :prio AND id > :cid))))"
)

RATE_SAMPLE = 100  # the last N jobs done give the seconds-per-megapixel rate
# Times are stored as ISO 8601 UTC text (to_text), so a prefix is a time bucket: grouping by
# substr(finished_at, ...) reads only the jobs_throughput index, where date()/strftime() would parse
# every row's text (docs/performance.md, "Daemon").
HOUR_PREFIX, DAY_PREFIX = 13, 10  # "2026-12-02T07", "2026-12-02"
BUSY_TIMEOUT_MS = 30_000


class StoreError(Exception):
    """The job store cannot be used; str(e) says why in one line."""


class JobNotFoundError(StoreError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class JobQueryError(ValueError):
    """A listing parameter the read model cannot use (state, order, cursor); str(e) says which."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def to_text(value: datetime) -> str: ...
@overload
def to_text(value: None) -> None: ...
def to_text(value: datetime | None) -> str | None:
    """How times are stored: ISO 8601 in UTC with microseconds, so text order is time order."""
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
    original_path: str | None  # where the original is now, inside the folder `original` names
    original: str
    error: str | None
    failure_kind: str | None
    report: dict[str, Any] | None
    note: str | None
    cancel_requested: bool
    input_megapixels: float | None  # from the header at intake; the decoded size when it finishes
    work_seconds: float | None  # the pipeline's own clock, else wall time; written when it finishes
    cleaned_at: datetime | None  # when retention removed the original (archive_days / failed_days)

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
            data[name] = to_text(value) if isinstance(value, datetime) else value
        data["seconds"] = self.seconds
        return data


# Every column of a Job, in one place, so every query (reads and the store's RETURNING) builds the same Job.
JOB_COLUMNS = (
    "id, input_path, content_sha256, size_bytes, mtime, preset, options, state, priority, attempts, "
    "detected_at, started_at, finished_at, heartbeat_at, progress, stage, output_path, output_size_bytes, "
    "original_path, original, error, failure_kind, report, note, cancel_requested, input_megapixels, "
    "work_seconds, cleaned_at"
)
_DATETIMES = ("detected_at", "started_at", "finished_at", "heartbeat_at", "cleaned_at")


def job_from_row(row: Any) -> Job:
    values = dict(row._mapping)
    values["options"] = json.loads(values["options"] or "{}")
    values["report"] = None if values["report"] is None else json.loads(values["report"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    for name in _DATETIMES:
        values[name] = _to_datetime(values[name])
    return Job(**values)


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None  # pass back as `cursor` for the next page; None at the end


@dataclass(frozen=True)
class QueuePlace:
    job: Job | None  # None: no such job
    position: int | None  # 0 running, 1 next to run, None not waiting (done, failed, cancelled)
    ahead: list[Job]  # running jobs first, then queued ones claimed before it, then the job itself


@dataclass(frozen=True)
class Rate:
    seconds_per_megapixel: float | None  # None until a done job has been timed
    mean_input_megapixels: float | None
    # The same rate for each model chain among those jobs: models differ ~30x in cost, and a chain costs
    # its steps together. Keyed by the chain's ids, one id for a one-step chain.
    per_chain: dict[tuple[str, ...], float] = field(default_factory=dict)


def queue_positions(queue: Sequence[Job]) -> dict[int, int]:
    """Position of each job of a queue listing (running first, then claim order): 0 running, 1.. queued."""
    positions: dict[int, int] = {}
    waiting = 0
    for job in queue:
        if job.state == "queued":
            waiting += 1
        positions[job.id] = 0 if job.state == "processing" else waiting
    return positions


def configure_connections(engine: Engine, pragmas: Sequence[str]) -> None:
    """Run `pragmas` on every new connection, and let the code say how each transaction begins."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see below)
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers pass immediate=True: see daemon/store.py for why BEGIN IMMEDIATE.
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _read_only_engine(db_path: Path) -> Engine:
    uri = f"{db_path.resolve().as_uri()}?mode=ro"
    engine = create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
        poolclass=QueuePool,
        pool_size=4,
        max_overflow=16,  # the site's thread pools never wait for a connection
    )
    configure_connections(engine, (f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}", "PRAGMA query_only = ON"))
    return engine


@dataclass(frozen=True)
class QueuePause:
    """The queue's pause as stored: no new job starts while `paused`."""

    paused: bool
    mode: str | None  # "after-current" | "now"
    by: str | None  # who paused it: "CLI on loopback", "page (token holder)", ...
    at: datetime | None


class ReadModel:
    """Every read of the jobs table. Thread-safe; several processes may read while one writes."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        self._engine = self._open_engine()

    def _open_engine(self) -> Engine:
        return _read_only_engine(self.db_path)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        # One transaction: every SELECT of one question sees the same snapshot.
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def _jobs(self, sql: str, params: dict[str, Any]) -> list[Job]:
        with self._read() as conn:
            return [job_from_row(row) for row in conn.execute(text(sql), params)]

    # -- single jobs ---------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        found = self._jobs(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id", {"id": job_id})
        return found[0] if found else None

    def get_or_raise(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return job

    def queue_pause(self) -> QueuePause:
        with self._read() as conn:
            row = conn.exec_driver_sql(
                "SELECT paused, mode, paused_by, paused_at FROM queue_control WHERE id = 1"
            ).first()
        if row is None:
            return QueuePause(False, None, None, None)
        return QueuePause(bool(row[0]), row[1], row[2], _to_datetime(row[3]))

    def queue_position(self, job_id: int) -> int | None:
        """1 = next to run; 0 = running now; None = not waiting (done, failed, cancelled, unknown)."""
        return self.job_with_queue(job_id, max_ahead=0).position

    def job_with_queue(self, job_id: int, max_ahead: int) -> QueuePlace:
        """One snapshot: the job, its queue position and the jobs that run before it (at most
        max_ahead of them, running ones first), itself last."""
        with self._read() as conn:
            row = conn.execute(text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id"), {"id": job_id}).first()
            job = None if row is None else job_from_row(row)
            if job is None or job.state not in ACTIVE_STATES:
                return QueuePlace(job, None, [])
            if job.state == "processing":
                return QueuePlace(job, 0, self._running_up_to(conn, job))
            return self._queued_place(conn, job, max_ahead)

    @staticmethod
    def _running_up_to(conn: Connection, job: Job) -> list[Job]:
        rows = conn.execute(
            text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'processing' AND id <= :id ORDER BY id"),
            {"id": job.id},
        )
        return [job_from_row(r) for r in rows]

    @staticmethod
    def _queued_place(conn: Connection, job: Job, max_ahead: int) -> QueuePlace:
        params = {"p": job.priority, "id": job.id, "n": max_ahead}
        waiting = conn.execute(text(f"SELECT COUNT(*) FROM jobs WHERE {_QUEUED_AHEAD}"), params).scalar_one()
        rows = conn.execute(
            text(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'processing' OR ({_QUEUED_AHEAD}) "
                f"ORDER BY {QUEUE_ORDER} LIMIT :n"
            ),
            params,
        )
        return QueuePlace(job, int(waiting) + 1, [*(job_from_row(r) for r in rows), job])

    # -- listings ------------------------------------------------------------------------------------

    def list(
        self,
        state: str | Sequence[str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "newest",
    ) -> JobPage:
        """A page of jobs: newest or oldest first by id, or in queue order (running, then claim order).
        `cursor` is the previous page's next_cursor."""
        states = [state] if isinstance(state, str) else list(state or [])
        _check_listing(states, limit, order)
        clauses, params = _state_clause(states)
        if cursor is not None:
            clauses.append(_cursor_clause(order, cursor, params))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sort = {"newest": "id DESC", "oldest": "id", "queue": QUEUE_ORDER}[order]
        params["limit"] = limit + 1
        jobs = self._jobs(f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY {sort} LIMIT :limit", params)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=jobs, next_cursor=_cursor_of(jobs[-1], order) if more and jobs else None)

    def queue(self, limit: int) -> builtins.list[Job]:  # builtins: in this class `list` is the method above
        """Running job(s), then queued ones in claim order."""
        return self.list(ACTIVE_STATES, limit, None, "queue").jobs

    # -- numbers -------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            return _counts(conn)

    def rate(self) -> Rate:
        with self._read() as conn:
            return _rate(conn)

    def stats(self, now: datetime | None = None, hours: int = 24, days: int = 30) -> dict[str, Any]:
        """Counts by state, images and megapixels per hour (last `hours`), per-day totals (last `days`),
        the seconds-per-megapixel rate and totals of done jobs, from one snapshot."""
        now = (now or utcnow()).astimezone(UTC)
        hour_start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
        with self._read() as conn:
            counts = _counts(conn)
            per_hour = _per_hour(conn, hour_start, hours)
            per_day = _per_day(conn, day_start, days)
            done_total = _done_total(conn)
            rate = _rate(conn)
        return {
            "generated_at": now.isoformat(),
            "counts": counts,
            "total": sum(counts.values()),
            "per_hour": per_hour,
            "per_day": per_day,
            "seconds_per_megapixel": rate.seconds_per_megapixel,
            "done_total": done_total,
        }


def _check_listing(states: list[str], limit: int, order: str) -> None:
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise JobQueryError(f"unknown state {unknown[0]!r}; use one or more of {', '.join(STATES)}")
    if order not in ORDERS:
        raise JobQueryError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
    if limit < 1:
        raise JobQueryError(f"limit must be at least 1, got {limit}")


def _state_clause(states: list[str]) -> tuple[list[str], dict[str, Any]]:
    if not states:
        return [], {}
    names = [f":s{i}" for i in range(len(states))]
    return [f"state IN ({', '.join(names)})"], {f"s{i}": s for i, s in enumerate(states)}


def _cursor_clause(order: str, cursor: str, params: dict[str, Any]) -> str:
    if order == "queue":
        params["rank"], params["prio"], params["cid"] = _parse_queue_cursor(cursor)
        return _AFTER_QUEUE_CURSOR
    params["cid"] = _parse_id_cursor(cursor)
    return "id < :cid" if order == "newest" else "id > :cid"


def _cursor_of(last: Job, order: str) -> str:
    if order == "queue":
        rank = 0 if last.state == "processing" else 1
        return f"{rank}.{last.priority}.{last.id}"
    return str(last.id)


def _parse_id_cursor(cursor: str) -> int:
    try:
        value = int(cursor)
    except ValueError:
        value = -1
    if value < 0:
        raise JobQueryError(f"cursor {cursor!r} is not one this API returned (use the 'next' value)")
    return value


def _parse_queue_cursor(cursor: str) -> tuple[int, int, int]:
    parts = cursor.split(".")
    try:
        rank, priority, job_id = (int(p) for p in parts)
    except ValueError:
        raise JobQueryError(
            f"cursor {cursor!r} is not a queue-order cursor this API returned (use the 'next' value)"
        ) from None
    return rank, priority, job_id


def _counts(conn: Connection) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for state, count in conn.execute(text("SELECT state, COUNT(*) FROM jobs GROUP BY state")):
        counts[state] = int(count)
    return counts


def _rate(conn: Connection) -> Rate:
    """Total work seconds / total input megapixels over the RATE_SAMPLE jobs done last, and their mean
    input size (what a waiting job of unknown size counts as)."""
    seconds, timed_megapixels, mean = conn.execute(
        text(
            "SELECT SUM(work_seconds), SUM(CASE WHEN work_seconds IS NOT NULL THEN input_megapixels END), "
            "AVG(input_megapixels) FROM (SELECT work_seconds, input_megapixels FROM jobs "
            "WHERE state = 'done' AND input_megapixels > 0 ORDER BY finished_at DESC LIMIT :n)"
        ),
        {"n": RATE_SAMPLE},
    ).one()
    per_megapixel = float(seconds) / float(timed_megapixels) if seconds and timed_megapixels else None
    return Rate(per_megapixel, None if mean is None else float(mean), _rate_per_chain(conn))


def _rate_per_chain(conn: Connection) -> dict[tuple[str, ...], float]:
    """Seconds per input megapixel of the same recent done jobs, for each model chain they ran."""
    rows = conn.execute(
        text(
            "SELECT model, SUM(work_seconds), SUM(input_megapixels) FROM (SELECT work_seconds, "
            "input_megapixels, json_extract(options, '$.model') AS model FROM jobs WHERE state = 'done' "
            "AND input_megapixels > 0 ORDER BY finished_at DESC LIMIT :n) "
            "WHERE work_seconds IS NOT NULL AND model IS NOT NULL GROUP BY model"
        ),
        {"n": RATE_SAMPLE},
    )
    return {model_chain_of(model): float(s) / float(mp) for model, s, mp in rows if s and mp}


def model_chain_of(stored: Any) -> tuple[str, ...]:
    """A job's `model` option as stored (an id, or a chain's ids as a list or its JSON text) -> ids."""
    if isinstance(stored, str) and stored.startswith("["):
        try:
            stored = json.loads(stored)
        except ValueError:
            return (stored,)
    if isinstance(stored, list):
        return tuple(str(part) for part in stored)
    return (str(stored),)


def _bucket_sums(
    conn: Connection, prefix: int, sums: str, where: str, since: datetime
) -> dict[str, tuple[Any, ...]]:
    """`sums` per time bucket (the first `prefix` characters of finished_at) of the jobs `where` holds,
    finished from `since` on."""
    rows = conn.execute(
        text(
            f"SELECT substr(finished_at, 1, {prefix}) AS bucket, {sums} FROM jobs "
            f"WHERE {where} AND finished_at >= :since GROUP BY bucket"
        ),
        {"since": to_text(since)},
    )
    return {row[0]: tuple(row[1:]) for row in rows}


def _per_hour(conn: Connection, start: datetime, hours: int) -> list[dict[str, Any]]:
    """Done jobs per clock hour (UTC), oldest first, hours without any included."""
    sums = "COUNT(*), COALESCE(SUM(input_megapixels), 0), COALESCE(SUM(work_seconds), 0)"
    found = _bucket_sums(conn, HOUR_PREFIX, sums, "state = 'done'", start)
    starts = [start + timedelta(hours=i) for i in range(hours)]
    return [_hour(hour, *found.get(to_text(hour)[:HOUR_PREFIX], (0, 0.0, 0.0))) for hour in starts]


def _hour(hour: datetime, images: int, megapixels: float, seconds: float) -> dict[str, Any]:
    return {
        "hour": hour.isoformat(),
        "images": int(images),
        "megapixels": round(float(megapixels), 4),
        "busy_seconds": round(float(seconds), 3),
    }


def _per_day(conn: Connection, start: datetime, days: int) -> list[dict[str, Any]]:
    """Done and failed jobs per day (UTC), oldest first, days without any included."""
    sums = (
        "SUM(state = 'done'), SUM(state = 'failed'), "
        "COALESCE(SUM(CASE WHEN state = 'done' THEN input_megapixels END), 0), "
        "COALESCE(SUM(CASE WHEN state = 'done' THEN output_size_bytes END), 0)"
    )
    found = _bucket_sums(conn, DAY_PREFIX, sums, "state IN ('done', 'failed')", start)
    keys = [(start + timedelta(days=i)).date().isoformat() for i in range(days)]
    return [_day(key, *found.get(key, (0, 0, 0.0, 0))) for key in keys]


def _day(key: str, done: int, failed: int, megapixels: float, output_bytes: int) -> dict[str, Any]:
    return {
        "day": key,
        "done": int(done),
        "failed": int(failed),
        "megapixels": round(float(megapixels), 4),
        "output_bytes": int(output_bytes),
    }


def _done_total(conn: Connection) -> dict[str, Any]:
    images, megapixels, seconds = conn.execute(
        text(
            "SELECT COUNT(*), COALESCE(SUM(input_megapixels), 0), COALESCE(SUM(work_seconds), 0) "
            "FROM jobs WHERE state = 'done'"
        )
    ).one()
    return {
        "images": int(images),
        "megapixels": round(float(megapixels), 4),
        "busy_seconds": round(float(seconds), 3),
    }
