"""`restorer serve`: the composition root. One asyncio loop in the main process runs the HTTP servers
and supervises; the intake runs on its own thread; the pipeline runs in the worker pool's processes
(daemon/worker_pool.py: `workers` local processes, or the Ray client and its actors).

Start order (READY=1 is sent only at the end, so systemd and scripts can trust it):
  folders exist -> DB open (refused on a network filesystem) -> stale temp files removed -> jobs left
  'processing' by a crash requeued (or failed at max_attempts) -> workers started, their models loaded
  -> both ports bound -> intake started (startup scan) -> READY=1.
Running: the pool restarts a worker that dies or stops heart-beating for hang_seconds (its job goes back
to queued with the attempt counted; after max_attempts it fails into failed_dir); WATCHDOG=1 is sent
only while the pool is healthy; intake and the workers pause while the outbox is (nearly) full
(daemon/outbox_space.py decides when; this service only wires what pausing means).
Stopping (SIGTERM/SIGINT): STOPPING=1, intake stops, running images may finish within
stop_grace_seconds, else the workers are killed and their jobs requeued without counting the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon import retention, sdnotify
from daemon.health import HealthState
from daemon.intake import Intake
from daemon.job_loop import PipelineProcessor, ProcessorFactory
from daemon.notify import Notifier
from daemon.originals import CRASH_ADVICE, move_to_failed
from daemon.outbox_space import OutboxSpace
from daemon.publish import remove_stale_temp_files, resolve_group
from daemon.settings import Settings
from daemon.store import AddResult, JobStore, StoreError
from daemon.worker_pool import PoolStartError, WorkerPool

log = logging.getLogger(__name__)

SUPERVISE_SECONDS = 0.2
DISK_CHECK_SECONDS = 2.0
RETENTION_SECONDS = 3600.0  # archive_days / failed_days count in days: an hourly sweep is plenty


class StartupError(Exception):
    """The service cannot start; str(e) says why in one line."""


class Service:
    def __init__(
        self,
        settings: Settings,
        health: HealthState | None = None,
        processor_factory: ProcessorFactory = PipelineProcessor,
    ) -> None:
        """processor_factory: what the workers run per job (tests pass a cheap stand-in)."""
        self.settings = settings
        self.processor_factory = processor_factory
        self.health = health or HealthState()
        self.store: JobStore | None = None
        self.intake: Intake | None = None
        self.runners: list[Any] = []
        self.pool: WorkerPool | None = None
        self.notifier: Notifier | None = None
        self.outbox_space: OutboxSpace | None = None
        self._stopping = asyncio.Event()
        self._last_watchdog = 0.0

    # -- start ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        for folder in (settings.inbox, settings.outbox, settings.failed_dir, settings.archive_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        try:
            resolve_group(settings.output_group)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        try:
            self.store = JobStore(settings.db_path)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        for folder in (settings.outbox, settings.failed_dir, settings.archive_dir, settings.inbox):
            removed = remove_stale_temp_files(Path(folder))
            if removed:
                log.info("removed %d stale temp file(s) under %s", removed, folder)
        interrupted = self.store.requeue_interrupted(settings.max_attempts)
        if interrupted.requeued:
            log.info(
                "requeued %d job(s) interrupted by the last stop: %s",
                len(interrupted.requeued),
                interrupted.requeued,
            )
        for job in interrupted.failed:
            move_to_failed(settings, self.store, job, job.error or "the worker crashed", CRASH_ADVICE)
        try:
            self.notifier = Notifier(settings, self.store, self.health)
        except ValueError as exc:  # a notify URL's events= names an unknown event
            raise StartupError(str(exc)) from None
        self.notifier.start()
        self.outbox_space = OutboxSpace(
            settings, self.store, self.health, pause=self._pause_work, resume=self._resume_work
        )
        self.pool = WorkerPool(
            settings,
            self.store,
            self.health,
            on_disk_full=self.outbox_space.on_disk_full,
            processor_factory=self.processor_factory,
        )
        try:
            info = await self.pool.start()
        except PoolStartError as exc:
            raise StartupError(str(exc)) from None
        self.health.set_engine(info)
        self.runners = await self._start_servers()
        self.intake = Intake(settings, self.store, self.health, on_job=self._on_new_job)
        await loop.run_in_executor(None, self.intake.start)
        self.outbox_space.check()
        self.health.update(ready=True)
        sdnotify.notify(
            f"READY=1\nSTATUS=watching {settings.inbox} ({self.intake.mode})\nMAINPID={os.getpid()}"
        )
        log.info("ready: inbox %s -> outbox %s", settings.inbox, settings.outbox)

    async def _start_servers(self) -> list[Any]:
        from status_site import start_servers

        assert self.store is not None
        try:
            return await start_servers(
                self.settings,
                self.store,
                self.health,
                on_job=self._on_new_job,
                on_queue_change=self._on_queue_change,
                send_test_notification=self.notifier.send_test if self.notifier else None,
                list_models=self._list_models,
            )
        except OSError as exc:  # port taken, address not on this machine, ...
            where = f"{self.settings.bind}:{self.settings.api_port}/{self.settings.site_port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None

    def _list_models(self) -> list[dict[str, Any]]:
        return list_models(self.settings)

    def _on_new_job(self, result: AddResult) -> None:
        """Intake or upload thread: a new row (enqueue_file already disposed of a skipped duplicate's
        original); wake a worker if there is work."""
        if result.job.state == "queued" and self.pool is not None:
            self.pool.wake()

    def _on_queue_change(self) -> None:
        """A pause, resume or prioritize through the API: idle workers look at the queue again now."""
        if self.pool is not None:
            self.pool.wake()

    # -- workers and disk space --------------------------------------------------------------------------

    def worker_healthy(self) -> bool:
        return self.pool is not None and self.pool.healthy()

    def _pause_work(self, reason: str) -> None:
        """The outbox is (nearly) full (daemon/outbox_space.py): no new jobs, no new claims."""
        if self.pool is not None:
            self.pool.pause()
        if self.intake is not None:
            self.intake.pause(reason)
        else:
            self.health.pause_intake(reason)

    def _resume_work(self) -> None:
        if self.intake is not None:
            self.intake.resume()
        else:
            self.health.resume_intake()
        if self.pool is not None:
            self.pool.resume()

    def _sweep_retention(self) -> None:
        if self.store is None or not retention.rules(self.settings):
            return
        try:
            cleaned = retention.sweep(self.settings, self.store, datetime.now(UTC))
        except Exception:  # a retention failure must never stop the service; the next sweep retries
            log.exception("retention sweep failed")
            return
        if cleaned:
            log.info("retention removed the originals of %d job(s): %s", len(cleaned), cleaned)

    # -- run and stop -----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info(
                "stop requested: finishing the current image (up to %g s)", self.settings.stop_grace_seconds
            )
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        watchdog = sdnotify.watchdog_seconds()
        next_disk = 0.0
        disk_check: asyncio.Future[None] | None = None
        next_retention = 0.0
        sweep: asyncio.Future[None] | None = None
        while not self._stopping.is_set():
            if self.pool is not None:
                await self.pool.supervise()
            now = time.monotonic()
            space = self.outbox_space
            if space is not None and now >= next_disk and (disk_check is None or disk_check.done()):
                # Off the loop: statvfs on a hung NFS hard mount would otherwise freeze the API too.
                next_disk = now + DISK_CHECK_SECONDS
                disk_check = asyncio.get_running_loop().run_in_executor(None, space.check)
            if now >= next_retention and (sweep is None or sweep.done()):
                next_retention = now + RETENTION_SECONDS
                sweep = asyncio.get_running_loop().run_in_executor(None, self._sweep_retention)
            if watchdog is not None and now - self._last_watchdog >= watchdog / 3 and self.worker_healthy():
                self._last_watchdog = now
                log.debug("watchdog ping (worker %s)", self.health.get("worker_state"))
                sdnotify.notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SUPERVISE_SECONDS)

    async def stop(self) -> None:
        self.health.update(stopping=True)
        sdnotify.notify("STOPPING=1")
        loop = asyncio.get_running_loop()
        if self.intake is not None:
            await loop.run_in_executor(None, self.intake.stop)
        if self.pool is not None:
            await self.pool.stop(self.settings.stop_grace_seconds)
        for runner in reversed(self.runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.store is not None:
            self.store.close()
        log.info("stopped")


async def serve(settings: Settings, processor_factory: ProcessorFactory = PipelineProcessor) -> int:
    service = Service(settings, processor_factory=processor_factory)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    start = asyncio.ensure_future(service.start())
    stop_wait = asyncio.ensure_future(service._stopping.wait())
    await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    try:
        if start.done():
            start.result()  # raises the startup error, if any
            await service.run_until_stopped()
        else:
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, StartupError):
                await start
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        await service.stop()
        return 1
    finally:
        stop_wait.cancel()
    await service.stop()
    return 0


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Every model here, for the site (capabilities, and the ids an upload's `model` field may name), the
    weights folder scanned again (memoised by name, size and mtime; new files are detected in a child
    process, so this process stays torch-free)."""
    from pipeline import model_statuses

    statuses = model_statuses(settings.weights_dir, settings.cache_dir)
    return [status.to_dict() for status in statuses]
