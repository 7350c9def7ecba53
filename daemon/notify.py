"""Notifications: what the daemon tells the people who run it, through Apprise URLs and a signed webhook.

Events: job.done, job.failed, batch.finished (the queue drained after N jobs), daemon.degraded and
daemon.recovered, and "test" (the page's button). Each target chooses its events.

The path of one notification, and why each step is where it is:
1. A job reaching done/failed is recorded by a SQLite trigger (store migration 6), whoever finished it
   (a worker process, the Ray publisher, the crash requeue), so no path can forget to notify.
2. `Outbox.collect` turns those rows into one outbox row per target and event, updates the running
   batch and, once no job is queued or running, adds batch.finished: all in one transaction, so a crash
   loses none and adds none twice.
3. `Notifier` (an asyncio task in the service) sends the due rows, a few at a time, off the event loop's
   critical path: nothing a receiver does (refuse, hang, answer 500) slows restoring. A row is deleted in
   the transaction right after its receiver accepted it; a failure retries with exponential backoff until
   MAX_AGE_SECONDS, then the row is dropped with a warning.
   Crash window, honestly: a crash after the receiver accepted and before that delete commits sends the
   row again after the restart. Each body carries its delivery id, so a receiver can drop the repeat.

URLs and the webhook secret hold tokens: they never reach a log, health, the API or the page. A target
is named by its scheme and a short hash of its URL (`redact`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from sqlalchemy import Connection, text

from daemon.health import HealthState
from daemon.settings import NOTIFY_EVENTS, Settings
from daemon.store import JobStore

log = logging.getLogger(__name__)

TEST_EVENT = "test"
SIGNATURE_HEADER = "X-Restorer-Signature"
TICK_SECONDS = 1.0
SEND_SLOTS = 4  # notifications in flight at once
SEND_TIMEOUT_SECONDS = 15.0
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 600.0
MAX_AGE_SECONDS = 24 * 3600.0
MAX_PENDING = 10_000  # beyond this new notifications are dropped (a receiver down for days)
DEGRADED_GRACE_SECONDS = 5.0  # a worker restart that heals at once is not news

TargetKind = Literal["apprise", "webhook"]


def redact(url: str) -> str:
    """How a target is named anywhere a person can read it: scheme and a short hash, never the URL."""
    scheme = url.split("://", 1)[0] if "://" in url else "url"
    return f"{scheme[:16]}#{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Target:
    key: str  # redact(url): the only name that leaves this module
    kind: TargetKind
    events: frozenset[str]
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)

    def wants(self, event: str) -> bool:
        return event == TEST_EVENT or event in self.events


def _events_of(raw: str, where: str) -> frozenset[str]:
    events = frozenset(part.strip() for part in raw.replace("|", ",").split(",") if part.strip())
    unknown = sorted(events - set(NOTIFY_EVENTS))
    if unknown:
        raise ValueError(f"{where}: unknown event(s) {unknown}; known: {', '.join(NOTIFY_EVENTS)}")
    return events


def apprise_target(url: str, default_events: list[str]) -> Target:
    """An Apprise URL; its own `events=` query parameter (ours, not Apprise's) is taken off."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    chosen = [value for name, value in query if name == "events"]
    rest = [(name, value) for name, value in query if name != "events"]
    clean = urlunsplit(parts._replace(query=urlencode(rest)))
    events = (
        _events_of(",".join(chosen), f"notify URL {redact(url)}") if chosen else frozenset(default_events)
    )
    return Target(key=redact(clean), kind="apprise", events=events, url=clean)


def targets_of(settings: Settings) -> list[Target]:
    """Every configured target; a bad `events=` raises ValueError naming the target by its redacted key."""
    defaults = list(settings.webhook_events)
    targets = [apprise_target(url.get_secret_value(), defaults) for url in settings.notify_urls]
    if settings.webhook_url is not None and settings.webhook_secret is not None:
        url = settings.webhook_url.get_secret_value()
        targets.append(
            Target(
                key=redact(url),
                kind="webhook",
                events=frozenset(settings.webhook_events),
                url=url,
                secret=settings.webhook_secret.get_secret_value(),
            )
        )
    return targets


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- the SQLite side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    row_id: int
    delivery_id: str
    target: str
    event: str
    body: dict[str, Any]
    attempts: int
    created_at: float


FAILED_ADVICE = (
    "see the reason file next to the original in the failed folder; once fixed, press Retry on the page "
    "or POST /api/v1/jobs/{job_id}/retry"
)


class Outbox:
    """The notify_* tables (store migration 6). Blocking: the Notifier calls it from a thread."""

    def __init__(self, store: JobStore, inbox: Path) -> None:
        self.store = store
        self.inbox = inbox

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.store.transaction() as conn:
            yield conn

    def add(self, conn: Connection, targets: list[Target], event: str, data: dict[str, Any]) -> int:
        pending = conn.execute(text("SELECT COUNT(*) FROM notify_outbox")).scalar_one()
        added = 0
        stamp = time.time()
        for target in targets:
            if not target.wants(event):
                continue
            if pending + added >= MAX_PENDING:
                log.warning("notification outbox full (%d): %s to %s dropped", MAX_PENDING, event, target.key)
                continue
            body = {"event": event, "time": now_text(), "data": data}
            conn.execute(
                text(
                    "INSERT INTO notify_outbox (delivery_id, target, event, body, created_at, next_at) "
                    "VALUES (:id, :target, :event, :body, :now, :now)"
                ),
                {
                    "id": uuid.uuid4().hex,
                    "target": target.key,
                    "event": event,
                    "body": json.dumps(body),
                    "now": stamp,
                },
            )
            added += 1
        return added

    def enqueue(self, targets: list[Target], event: str, data: dict[str, Any]) -> int:
        with self._transaction() as conn:
            return self.add(conn, targets, event, data)

    def _folder(self, input_path: str | None) -> str:
        """The top-level inbox folder a job came from ('' for the inbox itself): the batch's name."""
        if not input_path:
            return ""
        path = PurePath(input_path)
        with suppress(ValueError):
            path = path.relative_to(self.inbox)
        return path.parts[0] if len(path.parts) > 1 else ""

    def collect(self, targets: list[Target], intake_idle: bool = True) -> int:
        """Job events -> outbox rows, batch counts, and batch.finished once the queue drained (and intake
        has no file waiting to become stable: a drop still being copied is the same batch)."""
        with self.store.reading() as conn:  # most ticks have nothing to do: no write lock for them
            idle = conn.execute(
                text(
                    "SELECT NOT EXISTS (SELECT 1 FROM notify_events) "
                    "AND (SELECT done + failed FROM notify_batch WHERE id = 1) = 0"
                )
            ).scalar_one()
        if idle:
            return 0
        with self._transaction() as conn:
            events = conn.execute(
                text(
                    "SELECT e.id, e.job_id, e.state, j.input_path, j.error FROM notify_events e "
                    "LEFT JOIN jobs j ON j.id = e.job_id ORDER BY e.id"
                )
            ).all()
            added = 0
            for event_id, job_id, state, input_path, error in events:
                data: dict[str, Any] = {"job_id": job_id, "file": PurePath(input_path or "").name}
                if state == "failed":
                    data.update(reason=error, what_to_do=FAILED_ADVICE.format(job_id=job_id))
                added += self.add(conn, targets, f"job.{state}", data)
                self._count(conn, state, self._folder(input_path))
                conn.execute(text("DELETE FROM notify_events WHERE id = :id"), {"id": event_id})
            if intake_idle:
                added += self._maybe_batch_finished(conn, targets)
            return added

    def _count(self, conn: Connection, state: str, folder: str) -> None:
        column = "done" if state == "done" else "failed"
        row = conn.execute(text("SELECT folders FROM notify_batch WHERE id = 1")).one()
        folders = set(filter(None, row[0].split("\n"))) | {folder or "(inbox)"}
        conn.execute(
            text(
                f"UPDATE notify_batch SET {column} = {column} + 1, "
                "started_at = COALESCE(started_at, :now), folders = :folders WHERE id = 1"
            ),
            {"now": time.time(), "folders": "\n".join(sorted(folders)[:50])},
        )

    def _maybe_batch_finished(self, conn: Connection, targets: list[Target]) -> int:
        done, failed, started, folders = conn.execute(
            text("SELECT done, failed, started_at, folders FROM notify_batch WHERE id = 1")
        ).one()
        if done + failed == 0:
            return 0
        busy = conn.execute(
            text("SELECT 1 FROM jobs WHERE state IN ('queued', 'processing') LIMIT 1")
        ).first()
        if busy is not None:
            return 0
        names = [name for name in folders.split("\n") if name]
        name = names[0] if len(names) == 1 and names[0] != "(inbox)" else None
        minutes = max(0.0, time.time() - (started or time.time())) / 60
        summary = f"{done} restored, {failed} failed, {minutes:.0f} min"
        data = {
            "name": name,
            "restored": done,
            "failed": failed,
            "minutes": round(minutes, 1),
            "summary": f"{name}: {summary}" if name else summary,
        }
        conn.execute(text("UPDATE notify_batch SET done = 0, failed = 0, started_at = NULL, folders = ''"))
        return self.add(conn, targets, "batch.finished", data)

    def due(self, limit: int) -> list[Pending]:
        with self.store.reading() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, delivery_id, target, event, body, attempts, created_at FROM notify_outbox "
                    "WHERE next_at <= :now ORDER BY id LIMIT :limit"
                ),
                {"now": time.time(), "limit": limit},
            ).all()
        return [Pending(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]

    def delivered(self, row_id: int) -> None:
        with self._transaction() as conn:
            conn.execute(text("DELETE FROM notify_outbox WHERE id = :id"), {"id": row_id})

    def retry_later(self, item: Pending, error: str, backoff_base: float) -> bool:
        """Schedule the next try; False (and the row dropped) once it is older than MAX_AGE_SECONDS."""
        with self._transaction() as conn:
            if time.time() - item.created_at > MAX_AGE_SECONDS:
                conn.execute(text("DELETE FROM notify_outbox WHERE id = :id"), {"id": item.row_id})
                return False
            delay = min(backoff_base * 2**item.attempts, BACKOFF_MAX_SECONDS)
            conn.execute(
                text(
                    "UPDATE notify_outbox SET attempts = attempts + 1, next_at = :next, last_error = :error "
                    "WHERE id = :id"
                ),
                {"next": time.time() + delay, "error": error, "id": item.row_id},
            )
            return True

    def drop_unknown_targets(self, keys: set[str]) -> int:
        """Rows for targets no longer configured (a URL removed from the settings) are never sent."""
        with self._transaction() as conn:
            rows = conn.execute(text("SELECT id, target FROM notify_outbox")).all()
            stale = [row_id for row_id, target in rows if target not in keys]
            for row_id in stale:
                conn.execute(text("DELETE FROM notify_outbox WHERE id = :id"), {"id": row_id})
            return len(stale)

    def pending(self) -> int:
        with self.store.reading() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM notify_outbox")).scalar_one())


# -- sending -------------------------------------------------------------------------------------------


def _title_and_text(event: str, data: dict[str, Any]) -> tuple[str, str]:
    if event == "job.done":
        return "Photo restored", f"{data.get('file')} is restored (job {data.get('job_id')})."
    if event == "job.failed":
        return "Photo failed", f"{data.get('file')} failed: {data.get('reason')}. {data.get('what_to_do')}"
    if event == "batch.finished":
        return "Batch finished", str(data.get("summary"))
    if event == "daemon.degraded":
        return "Restorer needs attention", "; ".join(data.get("reasons", []))
    if event == "daemon.recovered":
        return "Restorer recovered", "Everything works again."
    return "Restorer test notification", "Notifications from Neural Image Restore reach you."


def _error_text(exc: BaseException) -> str:
    """What failed, without the URL (aiohttp's messages name the host and path)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Only the errno's words: strerror may quote the address.
        code = exc.os_error.errno
        return f"cannot connect ({os.strerror(code) if code else type(exc.os_error).__name__})"
    return type(exc).__name__


def _send_apprise(url: str, title: str, body: str) -> bool:
    import apprise  # only where notifications are configured

    sender = apprise.Apprise()
    if not sender.add(url):
        return False
    return bool(sender.notify(title=title, body=body))


class Notifier:
    """The service's sender: collects events, watches health for degraded/recovered, sends due rows."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        health: HealthState,
        *,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        degraded_grace: float = DEGRADED_GRACE_SECONDS,
    ) -> None:
        self.targets = {target.key: target for target in targets_of(settings)}
        self.outbox = Outbox(store, Path(settings.inbox))
        self.health = health
        self.backoff_base = backoff_base
        self.degraded_grace = degraded_grace
        # Apprise's own log lines may quote URLs: keep them out of ours.
        logging.getLogger("apprise").setLevel(logging.CRITICAL)
        self._threads = ThreadPoolExecutor(max_workers=SEND_SLOTS, thread_name_prefix="notify-send")
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-db")
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failing: dict[str, str] = {}  # target key -> its last error
        self._last_error: str | None = None
        self._announced = "ok"  # the health status last told to the targets
        self._seen: tuple[str, float] = ("ok", 0.0)  # status now and since when (monotonic)

    async def _run(self, func: Any, *args: Any) -> Any:
        """Database work, on its own thread: Apprise sends that hang never delay it."""
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, func, *args)

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_SECONDS))
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        for pool in (self._threads, self._db_thread):
            pool.shutdown(wait=False, cancel_futures=True)

    async def send_test(self) -> int:
        """A test notification to every target; the number queued (0: none configured)."""
        count = await self._run(self.outbox.enqueue, list(self.targets.values()), TEST_EVENT, {})
        self._wake.set()
        return int(count)

    async def _loop(self) -> None:
        dropped = await self._run(self.outbox.drop_unknown_targets, set(self.targets))
        if dropped:
            log.info("dropped %d pending notification(s) for targets no longer configured", dropped)
        while True:
            try:
                await self._tick()
            except Exception:  # a broken tick must not end notifications for good
                log.exception("notifications: tick failed")
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)

    async def _tick(self) -> None:
        targets = list(self.targets.values())
        await self._run(self.outbox.collect, targets, not self.health.get("pending_files"))
        event = self._health_event()
        if event is not None:
            await self._run(self.outbox.enqueue, targets, *event)
        due = await self._run(self.outbox.due, SEND_SLOTS * 4)
        slots = asyncio.Semaphore(SEND_SLOTS)

        async def one(item: Pending) -> None:
            async with slots:
                await self._deliver(item)

        await asyncio.gather(*(one(item) for item in due))
        pending = await self._run(self.outbox.pending)
        self.health.update(
            notifications={
                "targets": len(targets),
                "pending": pending,
                "failing_targets": sorted(self._failing),
                "last_error": self._last_error,
            }
        )

    def _health_event(self) -> tuple[str, dict[str, Any]] | None:
        """daemon.degraded / daemon.recovered once a changed status held for degraded_grace seconds."""
        if not self.health.get("ready") or self.health.get("stopping"):
            return None
        status, reasons = self.health.reasons()
        status = "ok" if status == "ok" else "degraded"
        now = time.monotonic()
        if status != self._seen[0]:
            self._seen = (status, now)
        if status == self._announced or now - self._seen[1] < self.degraded_grace:
            return None
        self._announced = status
        if status == "degraded":
            return "daemon.degraded", {"reasons": reasons}
        return "daemon.recovered", {}

    async def _deliver(self, item: Pending) -> None:
        target = self.targets.get(item.target)
        if target is None:
            await self._run(self.outbox.delivered, item.row_id)
            return
        error = await self._send(target, item)
        if error is None:
            await self._run(self.outbox.delivered, item.row_id)
            self._failing.pop(target.key, None)
            log.info("notification %s %s sent to %s", item.delivery_id[:8], item.event, target.key)
            return
        self._failing[target.key] = error
        self._last_error = f"{target.key}: {error}"
        kept = await self._run(self.outbox.retry_later, item, error, self.backoff_base)
        if kept:
            log.info("notification %s to %s failed (%s); retrying later", item.event, target.key, error)
        else:
            log.warning(
                "notification %s to %s dropped after %s of failures (%s)",
                item.event,
                target.key,
                f"{MAX_AGE_SECONDS / 3600:.0f} h",
                error,
            )

    async def _send(self, target: Target, item: Pending) -> str | None:
        """None when the receiver accepted it, else why not (no URL in it)."""
        try:
            if target.kind == "webhook":
                return await self._send_webhook(target, item)
            title, body = _title_and_text(item.event, item.body.get("data", {}))
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._threads, _send_apprise, target.url, title, body)
            return None if ok else "not accepted (Apprise reported a failure)"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return _error_text(exc)

    async def _send_webhook(self, target: Target, item: Pending) -> str | None:
        assert self._session is not None and target.secret is not None
        body = json.dumps({"id": item.delivery_id, **item.body}).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, target.secret)}
        async with self._session.post(
            target.url, data=body, headers=headers, allow_redirects=False
        ) as answer:
            return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"


__all__ = ["Notifier", "Outbox", "Target", "redact", "sign", "targets_of"]
