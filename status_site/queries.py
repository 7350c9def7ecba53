"""Read-only queries the page and the API need beyond JobStore's own methods: the queue in run order
with keyset paging, throughput per hour and day, and the seconds-per-megapixel rate behind ETAs.

They run on a separate read-only SQLite connection (mode=ro) to the store's file: status_site can never
write through it, and in WAL mode these readers never wait for the worker's writes. Rows are turned into
the store's own `Job` objects, so a job looks the same whichever query found it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from daemon.store import JOB_COLUMNS, STATES, Job, job_from_row

Order = Literal["newest", "oldest", "queue"]
ORDERS: tuple[str, ...] = ("newest", "oldest", "queue")
MAX_LIMIT = 500
RATE_SAMPLE = 100  # the last N done jobs give the seconds-per-megapixel rate

# Megapixels of a finished job, from its report (input_size = [width, height]).
_MEGAPIXELS_SQL = (
    "(CAST(json_extract(report, '$.input_size[0]') AS REAL) * json_extract(report, '$.input_size[1]') / 1e6)"
)
# Work time of a finished job: the pipeline's own clock, else wall time between start and finish.
_SECONDS_SQL = (
    "COALESCE(NULLIF(json_extract(report, '$.seconds'), 0), "
    "(julianday(finished_at) - julianday(started_at)) * 86400.0)"
)
# Queue order as the worker claims jobs: the running one first, then priority, then arrival.
_QUEUE_RANK_SQL = "(CASE state WHEN 'processing' THEN 0 ELSE 1 END)"


class QueryError(ValueError):
    """A request parameter the queries cannot use; str(e) says which and why."""


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


class Queries:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        uri = f"{self.db_path.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)) as conn:
            conn.row_factory = sqlite3.Row
            yield conn

    def _jobs(self, sql: str, params: dict[str, Any]) -> list[Job]:
        with self._connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [job_from_row(_RowView(row)) for row in rows]

    # -- listing -------------------------------------------------------------------------------------

    def list_jobs(self, states: list[str], limit: int, cursor: str | None, order: Order) -> Page:
        unknown = [s for s in states if s not in STATES]
        if unknown:
            raise QueryError(f"unknown state {unknown[0]!r}; use one or more of {', '.join(STATES)}")
        if order not in ORDERS:
            raise QueryError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        return self._list(states, limit, cursor, order)

    def _list(self, states: list[str], limit: int, cursor: str | None, order: Order) -> Page:
        clauses: list[str] = []
        params: dict[str, Any] = {"limit": limit + 1}
        if states:
            clauses.append("state IN (" + ", ".join(f":s{i}" for i in range(len(states))) + ")")
            params.update({f"s{i}": s for i, s in enumerate(states)})
        if order == "queue":
            sort = f"{_QUEUE_RANK_SQL}, priority DESC, id"
            if cursor is not None:
                rank, priority, job_id = _parse_queue_cursor(cursor)
                clauses.append(
                    f"({_QUEUE_RANK_SQL} > :rank OR ({_QUEUE_RANK_SQL} = :rank AND "
                    "(priority < :prio OR (priority = :prio AND id > :cid))))"
                )
                params.update(rank=rank, prio=priority, cid=job_id)
        else:
            sort = "id DESC" if order == "newest" else "id"
            if cursor is not None:
                clauses.append("id < :cid" if order == "newest" else "id > :cid")
                params["cid"] = _parse_id_cursor(cursor)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        jobs = self._jobs(f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY {sort} LIMIT :limit", params)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        next_cursor = None
        if more and jobs:
            last = jobs[-1]
            rank = 0 if last.state == "processing" else 1
            next_cursor = f"{rank}.{last.priority}.{last.id}" if order == "queue" else str(last.id)
        return Page(jobs=jobs, next_cursor=next_cursor)

    def queue(self, limit: int) -> list[Job]:
        """Running job(s), then queued ones in claim order."""
        return self._list(["processing", "queued"], limit, None, "queue").jobs

    def job_with_queue(self, job_id: int, max_ahead: int) -> tuple[Job | None, int | None, list[Job]]:
        """One read transaction: the job, its queue position (0 running, 1 next, None not waiting) and
        the jobs that run before it, itself included (at most max_ahead + 1, running ones first)."""
        with self._connect() as conn:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id", {"id": job_id}).fetchone()
            if row is None:
                return None, None, []
            job = job_from_row(_RowView(row))
            if job.state == "processing":
                rows = conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'processing' AND id <= :id ORDER BY id",
                    {"id": job_id},
                ).fetchall()
                return job, 0, [job_from_row(_RowView(r)) for r in rows]
            if job.state != "queued":
                return job, None, []
            ahead_where = "state = 'queued' AND (priority > :p OR (priority = :p AND id < :id))"
            ahead = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE {ahead_where}", {"p": job.priority, "id": job_id}
            ).fetchone()[0]
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'processing' OR ({ahead_where}) "
                f"ORDER BY {_QUEUE_RANK_SQL}, priority DESC, id LIMIT :n",
                {"p": job.priority, "id": job_id, "n": max_ahead},
            ).fetchall()
        return job, int(ahead) + 1, [*(job_from_row(_RowView(r)) for r in rows), job]

    # -- throughput ----------------------------------------------------------------------------------

    def seconds_per_megapixel(self) -> float | None:
        """Total work seconds / total input megapixels over the last RATE_SAMPLE done jobs."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT SUM(sec), SUM(mp) FROM (SELECT {_SECONDS_SQL} AS sec, {_MEGAPIXELS_SQL} AS mp "
                "FROM jobs WHERE state = 'done' AND report IS NOT NULL AND started_at IS NOT NULL "
                f"AND {_MEGAPIXELS_SQL} > 0 ORDER BY id DESC LIMIT :n)",
                {"n": RATE_SAMPLE},
            ).fetchone()
        seconds, megapixels = row[0], row[1]
        if not seconds or not megapixels:
            return None
        return float(seconds) / float(megapixels)

    def mean_input_megapixels(self) -> float | None:
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT AVG(mp) FROM (SELECT {_MEGAPIXELS_SQL} AS mp FROM jobs WHERE state = 'done' "
                f"AND report IS NOT NULL AND {_MEGAPIXELS_SQL} > 0 ORDER BY id DESC LIMIT :n)",
                {"n": RATE_SAMPLE},
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def stats(self, now: datetime | None = None, hours: int = 24, days: int = 30) -> dict[str, Any]:
        """Counts by state, images and megapixels per hour (last `hours`), per-day totals (last `days`)."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        hour_start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
        with self._connect() as conn:
            counts = dict.fromkeys(STATES, 0)
            for state, count in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[state] = count
            per_hour_rows = conn.execute(
                f"SELECT strftime('%Y-%m-%dT%H:00:00+00:00', finished_at) AS hour, COUNT(*), "
                f"COALESCE(SUM({_MEGAPIXELS_SQL}), 0), COALESCE(SUM({_SECONDS_SQL}), 0) "
                "FROM jobs WHERE state = 'done' AND finished_at >= :since GROUP BY hour",
                {"since": hour_start.isoformat()},
            ).fetchall()
            per_day_rows = conn.execute(
                f"SELECT date(finished_at) AS day, SUM(state = 'done'), SUM(state = 'failed'), "
                f"COALESCE(SUM(CASE WHEN state = 'done' THEN {_MEGAPIXELS_SQL} END), 0), "
                "COALESCE(SUM(CASE WHEN state = 'done' THEN output_size_bytes END), 0) "
                "FROM jobs WHERE state IN ('done', 'failed') AND finished_at >= :since GROUP BY day",
                {"since": day_start.isoformat()},
            ).fetchall()
            totals = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM({_MEGAPIXELS_SQL}), 0), "
                f"COALESCE(SUM({_SECONDS_SQL}), 0) FROM jobs WHERE state = 'done'"
            ).fetchone()
        by_hour = {row[0]: row for row in per_hour_rows}
        per_hour = []
        for i in range(hours):
            key = (hour_start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:00:00+00:00")
            row = by_hour.get(key)
            per_hour.append(
                {
                    "hour": key,
                    "images": int(row[1]) if row else 0,
                    "megapixels": round(float(row[2]), 4) if row else 0.0,
                    "busy_seconds": round(float(row[3]), 3) if row else 0.0,
                }
            )
        by_day = {row[0]: row for row in per_day_rows}
        per_day = []
        for i in range(days):
            key = (day_start + timedelta(days=i)).date().isoformat()
            row = by_day.get(key)
            per_day.append(
                {
                    "day": key,
                    "done": int(row[1]) if row else 0,
                    "failed": int(row[2]) if row else 0,
                    "megapixels": round(float(row[3]), 4) if row else 0.0,
                    "output_bytes": int(row[4]) if row else 0,
                }
            )
        return {
            "generated_at": now.isoformat(),
            "counts": counts,
            "total": sum(counts.values()),
            "per_hour": per_hour,
            "per_day": per_day,
            "seconds_per_megapixel": self.seconds_per_megapixel(),
            "done_total": {
                "images": int(totals[0]),
                "megapixels": round(float(totals[1]), 4),
                "busy_seconds": round(float(totals[2]), 3),
            },
        }


class _RowView:
    """Adapts a sqlite3.Row to the `row._mapping[...]` access the store's row mapper uses."""

    def __init__(self, row: sqlite3.Row) -> None:
        self._mapping = row


def _parse_id_cursor(cursor: str) -> int:
    try:
        value = int(cursor)
    except ValueError:
        raise QueryError(f"cursor {cursor!r} is not one this API returned (use the 'next' value)") from None
    if value < 0:
        raise QueryError(f"cursor {cursor!r} is not one this API returned (use the 'next' value)")
    return value


def _parse_queue_cursor(cursor: str) -> tuple[int, int, int]:
    parts = cursor.split(".")
    try:
        if len(parts) != 3:
            raise ValueError
        rank, priority, job_id = (int(p) for p in parts)
    except ValueError:
        raise QueryError(
            f"cursor {cursor!r} is not a queue-order cursor this API returned (use the 'next' value)"
        ) from None
    return rank, priority, job_id
