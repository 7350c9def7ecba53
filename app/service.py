"""`restorer serve`: the composition root. One asyncio loop in the main process runs the HTTP servers
and supervises; the intake runs on its own thread; the pipeline runs in a worker process.

Start order (READY=1 is sent only at the end, so systemd and scripts can trust it):
  folders exist -> DB open (refused on a network filesystem) -> stale temp files removed -> jobs left
  'processing' by a crash requeued (or failed at max_attempts) -> worker started and its models loaded
  -> both ports bound -> intake started (startup scan) -> READY=1.
Running: the worker is restarted when it dies or stops heart-beating for hang_seconds (its job goes back
to queued with the attempt counted; after max_attempts it fails into failed_dir); WATCHDOG=1 is sent
only while the worker is healthy; intake pauses while the outbox is (nearly) full.
Stopping (SIGTERM/SIGINT): STOPPING=1, intake stops, the current image may finish within
stop_grace_seconds, else the worker is killed and the job requeued without counting the attempt; exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from daemon import sdnotify
from daemon.health import HealthState
from daemon.publish import free_bytes, remove_stale_temp_files, resolve_group
from daemon.settings import Settings
from daemon.store import AddResult, JobStore, StoreError
from daemon.watcher import Intake
from daemon.worker import CRASH_ADVICE, dispose_original, move_to_failed, spawn_context, worker_main

log = logging.getLogger(__name__)

SUPERVISE_SECONDS = 0.2
DISK_CHECK_SECONDS = 2.0
MAX_RESTART_DELAY = 30.0


class StartupError(Exception):
    """The service cannot start; str(e) says why in one line."""


def _set_parent_death_signal() -> None:
    # Runs in the worker before anything else (see _worker_entry): if the service is killed with -9,
    # the kernel kills the worker too, so no orphan keeps writing while a new service starts.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_entry(*args: Any) -> None:
    _set_parent_death_signal()
    worker_main(*args)


class Service:
    def __init__(self, settings: Settings, health: HealthState | None = None) -> None:
        self.settings = settings
        self.health = health or HealthState()
        self.store: JobStore | None = None
        self.intake: Intake | None = None
        self.runners: list[Any] = []
        self._ctx = spawn_context()
        self._stop_worker = self._ctx.Event()
        self._wake = self._ctx.Event()
        self._worker_paused = self._ctx.Event()
        self._process: Any = None
        self._conn: Any = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._current_job: int | None = None
        self._worker_started_at = 0.0
        self._crashes_without_job = 0
        self._restart_at: float | None = None
        self._stopping = asyncio.Event()
        self._disk_needed_bytes = 0
        self._disk_paused = False
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
        self._ready = loop.create_future()
        self._start_worker()
        info = await self._ready
        self.health.set_engine(info)
        self.runners = await self._start_servers()
        self.intake = Intake(settings, self.store, self.health, on_job=self._on_new_job)
        await loop.run_in_executor(None, self.intake.start)
        self._check_disk()
        self.health.update(ready=True)
        sdnotify.notify(
            f"READY=1\nSTATUS=watching {settings.inbox} ({self.intake.mode})\nMAINPID={os.getpid()}"
        )
        log.info("ready: inbox %s -> outbox %s", settings.inbox, settings.outbox)

    async def _start_servers(self) -> list[Any]:
        from status_site import start_servers

        assert self.store is not None
        try:
            return await start_servers(self.settings, self.store, self.health, on_job=self._on_new_job)
        except ValueError as exc:  # settings that contradict each other (protect_reads without a token)
            raise StartupError(str(exc)) from None
        except OSError as exc:  # port taken, address not on this machine, ...
            where = f"{self.settings.bind}:{self.settings.api_port}/{self.settings.site_port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None

    def _on_new_job(self, result: AddResult) -> None:
        """Intake thread: a new row. Wake the worker; a skipped duplicate's original is disposed now."""
        if result.job.state == "queued":
            self._wake.set()
            return
        assert self.store is not None
        source = Path(self.settings.inbox) / result.job.input_path
        dispose_original(self.settings, self.store, result.job, source)

    # -- worker process ---------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=False)
        self._stop_worker.clear()
        process = self._ctx.Process(
            target=_worker_entry,
            name="restorer-worker",
            args=(
                self.settings.model_dump_json(exclude={"api_token"}),
                child,
                self._stop_worker,
                self._wake,
                self._worker_paused,
                logging.getLogger().getEffectiveLevel(),
            ),
            daemon=True,
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        self._current_job = None
        self._worker_started_at = time.monotonic()
        self.health.worker_beat()
        self.health.update(
            worker_state="loading models",
            worker_alive=True,
            worker_pid=process.pid,
            worker_error=None,
            current_job_id=None,
        )
        loop.add_reader(parent.fileno(), self._on_worker_readable)
        log.info("worker started (pid %d)", process.pid)

    def _on_worker_readable(self) -> None:
        conn = self._conn
        try:
            while conn is not None and conn.poll():
                self._on_worker_message(conn.recv())
        except (EOFError, OSError):
            self._detach_pipe()
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(StartupError("the worker process died while loading the models"))

    def _detach_pipe(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._conn.fileno())
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _on_worker_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        self.health.worker_beat()
        if kind == "ready":
            self.health.update(worker_state="idle")
            self._crashes_without_job = 0
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message[1])
        elif kind == "fatal":
            log.error("worker could not start: %s", message[1])
            self.health.update(worker_error=message[1])
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(
                    StartupError(f"the worker could not load the pipeline: {message[1]}")
                )
        elif kind == "busy":
            self._current_job = message[1]
            self.health.update(worker_state="busy", current_job_id=message[1])
        elif kind == "finished":
            self._current_job = None
            self.health.update(worker_state="idle", current_job_id=None)
            report = message[3] or {}
            if report.get("backend"):
                self.health.set_engine({**report, "reason": report.get("backend_reason")})
        elif kind == "disk_full":
            self._disk_needed_bytes = int(message[2])
            self._pause_for_disk(f"the outbox is full ({message[3]}); waiting for free space")

    def worker_healthy(self) -> bool:
        """What WATCHDOG=1 vouches for: a live worker that has loaded its models and heart-beats.
        While a crashed or hung worker is being replaced, pings stop; if the replacement takes
        longer than WatchdogSec, systemd restarts the whole service."""
        if self._process is None or not self._process.is_alive():
            return False
        if self.health.get("worker_state") == "loading models":
            return not self.health.get("ready")  # first start: READY=1 itself waits for the models
        age = self.health.heartbeat_age()
        return age is None or age < self.settings.hang_seconds

    async def _supervise_worker(self) -> None:
        process = self._process
        now = time.monotonic()
        if process is None:
            if self._restart_at is not None and now >= self._restart_at:
                self._restart_at = None
                self._start_worker()
            return
        if not process.is_alive():
            self._worker_gone(f"the worker process exited (code {process.exitcode})")
            return
        busy = self.health.get("worker_state") == "busy"
        age = self.health.heartbeat_age() or 0.0
        if busy and age > self.settings.hang_seconds:
            log.error("worker silent for %.0f s on job %s: killing it", age, self._current_job)
            process.kill()
            await asyncio.get_running_loop().run_in_executor(None, process.join, 10)
            self._worker_gone(f"the worker hung for {age:.0f} s on job {self._current_job} and was restarted")

    def _worker_gone(self, why: str) -> None:
        assert self.store is not None
        job_id = self._current_job
        self._on_worker_readable()  # read whatever it said before dying
        self._detach_pipe()
        self._process = None
        log.error("%s", why)
        self.health.update(
            worker_alive=False,
            worker_state="restarting",
            worker_error=why,
            worker_restarts=self.health.get("worker_restarts") + 1,
            current_job_id=None,
        )
        result = self.store.requeue_interrupted(self.settings.max_attempts)
        for job in result.failed:
            log.error("job %d failed after %d attempts", job.id, job.attempts)
            move_to_failed(self.settings, self.store, job, job.error or why, CRASH_ADVICE)
        if result.requeued:
            log.info("requeued job(s) %s after the worker stopped", result.requeued)
        if job_id is None:
            self._crashes_without_job += 1  # dying without a job: back off (e.g. broken GPU driver)
        delay = 0.0 if job_id is not None else min(MAX_RESTART_DELAY, 2.0**self._crashes_without_job)
        self._restart_at = time.monotonic() + delay
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(StartupError(f"the worker could not start: {why}"))

    # -- disk space -------------------------------------------------------------------------------------

    def _pause_for_disk(self, reason: str) -> None:
        self._disk_paused = True
        self._worker_paused.set()
        if self.intake is not None:
            self.intake.pause(reason)
        else:
            self.health.pause_intake(reason)

    def _check_disk(self) -> None:
        outbox = Path(self.settings.outbox)
        try:
            free = free_bytes(outbox)
            writable = os.access(outbox, os.W_OK)
        except OSError as exc:
            self.health.update(outbox_writable=False, outbox_error=str(exc))
            return
        self.health.update(
            outbox_free_bytes=free,
            outbox_writable=writable,
            outbox_error=None if writable else "permission denied",
        )
        threshold = max(self.settings.min_free_mb * 1024 * 1024, int(self._disk_needed_bytes * 1.1))
        if free < threshold and not self._disk_paused:
            self._pause_for_disk(
                f"the outbox has {free // (1024 * 1024)} MB free, "
                f"below min_free_mb={self.settings.min_free_mb}"
            )
        elif free >= threshold and self._disk_paused:
            self._disk_paused = False
            self._disk_needed_bytes = 0
            self._worker_paused.clear()
            if self.intake is not None:
                self.intake.resume()
            else:
                self.health.resume_intake()
            assert self.store is not None
            requeued = self.store.requeue_failed("disk-full", "retried automatically after space returned")
            log.info("outbox has space again (%d MB free): intake resumed, requeued %s", free >> 20, requeued)
            self._wake.set()

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
        while not self._stopping.is_set():
            await self._supervise_worker()
            now = time.monotonic()
            if now >= next_disk and (disk_check is None or disk_check.done()):
                # Off the loop: statvfs on a hung NFS hard mount would otherwise freeze the API too.
                next_disk = now + DISK_CHECK_SECONDS
                disk_check = asyncio.get_running_loop().run_in_executor(None, self._check_disk)
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
        await self._stop_worker_process()
        for runner in reversed(self.runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        if self.store is not None:
            self.store.close()
        log.info("stopped")

    async def _stop_worker_process(self) -> None:
        process = self._process
        if process is None:
            return
        self._stop_worker.set()
        self._wake.set()
        deadline = time.monotonic() + self.settings.stop_grace_seconds
        while process.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self._on_worker_readable()
        if process.is_alive():
            log.warning(
                "the current image did not finish within %g s: requeueing job %s",
                self.settings.stop_grace_seconds,
                self._current_job,
            )
            process.kill()
            await loop_join(process)
        self._on_worker_readable()
        self._detach_pipe()
        self._process = None
        assert self.store is not None
        for job in self.store.list(state="processing", limit=10).jobs:
            self.store.requeue(job.id, refund_attempt=True)
        self.health.update(worker_alive=False, worker_state="stopped")


async def loop_join(process: Any) -> None:
    await asyncio.get_running_loop().run_in_executor(None, process.join, 10)


async def serve(settings: Settings) -> int:
    service = Service(settings)
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
