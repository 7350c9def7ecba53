"""The worker process: loads the models once, then restores queued jobs one at a time, in order.

It runs in its own process (multiprocessing "spawn": no inherited threads, locks or SQLite handles), so
a crash, a hang or a leak in the pipeline never takes the service, the watcher or the web page with it.
The service supervises it through a Pipe (messages below) and restarts it when it dies or goes quiet.

One job, step by step:
  claim (attempts+1) -> read the input once, check it is still the version that was queued -> restore
  with progress written to the store -> encode -> publish to the outbox at the mirrored path ->
  record "done" -> only then archive / delete / keep the original (a failed move is noted, never
  retried: the job stays done and the file is never processed again).
Bad input (pipeline BadImageError) fails at once: the file moves to failed_dir at the same relative path
with `<name>.error.txt` beside it. ENOSPC while publishing fails the job cleanly, keeps the original
and tells the service, which pauses intake until space returns.

Worker -> service messages: ("ready", engine_info) | ("fatal", message) | ("beat", job_id|None) |
("busy", job_id) | ("finished", job_id, state, report|None) | ("disk_full", job_id, needed_bytes, message)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from daemon.logs import configure_logging
from daemon.names import safe_file_name, safe_relative_path
from daemon.publish import DiskFullError, move_file, publish_bytes
from daemon.settings import Settings
from daemon.store import Job, JobStore
from pipeline import stage_spans
from pipeline.types import (
    AbsurdDimensionsError,
    BadImageError,
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    NotAnImageError,
    ProgressCallback,
    RestoreError,
    RestoreOptions,
    UnsupportedFormatError,
)

log = logging.getLogger(__name__)

# Where each pipeline stage sits on the job's 0..1 progress bar: the pipeline owns the stages and their order.
STAGE_SPANS: dict[str, tuple[float, float]] = stage_spans()
PROGRESS_WRITE_SECONDS = 0.5  # throttle: at most two progress writes per second (stage changes always)
WORKER_NICENESS = 10  # the worker yields the CPU to the HTTP servers and the watcher

ADVICE: dict[type[BaseException], str] = {
    EmptyFileError: "The file is empty (0 bytes); the copy probably failed. Copy it into the inbox again.",
    NotAnImageError: (
        "This is not a picture file. Only JPEG, PNG, WebP, TIFF, BMP, HEIC and GIF images can be restored."
    ),
    UnsupportedFormatError: (
        "This image format cannot be read. Save it as JPEG, PNG or TIFF in an image editor and drop it in "
        "the inbox again."
    ),
    CorruptImageError: (
        "The file is damaged or was cut off while being copied. Copy it again from the original source "
        "(or open and re-save it in an image editor), then drop it in the inbox again."
    ),
    DecompressionBombError: (
        "The image has more pixels than this restorer accepts (max_input_megapixels). Shrink it, or raise "
        "the limit in the configuration if the machine has the memory."
    ),
    AbsurdDimensionsError: "The image has a zero or absurd width/height. Re-save or crop it, then try again.",
}
CRASH_ADVICE = (
    "The restorer process stopped every time it worked on this file, so the file was set aside. It may be "
    "damaged in a way the decoder does not catch, or too large for this machine's memory: try a re-saved "
    "or smaller copy in the inbox. Once the cause is fixed, `restorer jobs retry <id>` (or Retry on the "
    "status page) runs it again."
)
GENERIC_ADVICE = (
    "Check that the file opens in an image viewer. To try again, run `restorer jobs retry {job_id}` or use "
    "Retry on the status page; a corrected file dropped into the inbox is picked up on its own."
)


@dataclass
class Processed:
    data: bytes
    format: str  # "png", "jpg", ...: the output format, its extension comes from FORMAT_EXTENSIONS
    report: dict[str, Any]


class Processor(Protocol):
    """What the worker runs for each job. The real one wraps pipeline.restorer.Restorer."""

    def warm_up(self, options: RestoreOptions) -> dict[str, Any]: ...

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed: ...

    def extension(self, fmt: str) -> str: ...


class PipelineProcessor:
    """The real pipeline: load_image -> Restorer.restore -> encode_image."""

    def __init__(self, settings: Settings) -> None:
        from pipeline.restorer import Restorer  # heavy (torch/openvino): only in the worker process

        self._restorer = Restorer(settings.engine_config())
        self._max_pixels = int(settings.max_input_megapixels * 1_000_000)
        self._weights_dir = settings.weights_dir
        self._cache_dir = settings.cache_dir

    def warm_up(self, options: RestoreOptions) -> dict[str, Any]:
        self._restorer.warm_up(options)
        # The backend's own account (backend, device, precision, reason) for health and the page.
        from pipeline.weights import model_statuses

        info = getattr(self._restorer.upscaler(options), "info", None)
        if dataclasses.is_dataclass(info) and not isinstance(info, type):
            engine = dataclasses.asdict(info)
        else:
            engine = dict(info) if isinstance(info, dict) else {}
        # Which models and face weights exist, for health and the page (status_site never imports torch).
        engine["models"] = [status.to_dict() for status in model_statuses(self._weights_dir, self._cache_dir)]
        return engine

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        from pipeline import restore_bytes

        restored = restore_bytes(
            self._restorer, data, options, max_pixels=self._max_pixels, on_progress=on_progress
        )
        return Processed(restored.data, restored.format, restored.report.to_dict())

    def extension(self, fmt: str) -> str:
        from pipeline.imageio import FORMAT_EXTENSIONS

        return FORMAT_EXTENSIONS.get(fmt, f".{fmt}")


def load_processor(settings: Settings) -> Processor:
    """The real pipeline, unless the test-only `processor` setting names a factory ("module:function")."""
    if not settings.processor:
        return PipelineProcessor(settings)
    module_name, _, attribute = settings.processor.partition(":")
    factory: Callable[[Settings], Processor] = getattr(importlib.import_module(module_name), attribute)
    log.warning("worker: using the test processor %s instead of the real pipeline", settings.processor)
    return factory(settings)


class JobCancelled(Exception):
    """Raised from the progress callback when someone cancelled the running job."""


def restore_options_from(job: Job, settings: Settings) -> RestoreOptions:
    """The options stored with the job (unknown keys from an older version are ignored)."""
    known = {f.name for f in dataclasses.fields(RestoreOptions)}
    stored = {key: value for key, value in job.options.items() if key in known}
    return settings.restore_options(job.preset if job.preset in settings.presets else None).replace(**stored)


# -- files around a job (also used by the service for jobs that failed by crashing) -----------------------


def error_text(job: Job, what: str, advice: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{PurePosixPath(job.input_path).name} could not be restored.\n\n"
        f"What was wrong: {what}\n\n"
        f"What to do: {advice}\n\n"
        f"(job {job.id}, attempt {job.attempts}, {when})\n"
    )


def advice_for(exc: BaseException | None, job_id: int) -> str:
    for error_type, advice in ADVICE.items():
        if isinstance(exc, error_type):
            return advice
    return GENERIC_ADVICE.format(job_id=job_id)


def move_to_failed(settings: Settings, store: JobStore, job: Job, what: str, advice: str) -> Job:
    """Move the input to failed_dir at the same relative path, with <name>.error.txt beside it."""
    relative = PurePosixPath(job.input_path)
    source = locate_input(settings, job)
    dest_dir = Path(settings.failed_dir) / relative.parent
    mode, group = settings.file_mode, settings.output_group
    try:
        if source is not None:
            moved = move_file(source, dest_dir, relative.name, None, group)
            error_name = moved.name + ".error.txt"
        else:
            moved, error_name = None, relative.name + ".error.txt"
        publish_bytes(error_text(job, what, advice).encode(), dest_dir, error_name, mode, group)
    except OSError as exc:
        log.error("job %d: could not move %s to the failed folder: %s", job.id, job.input_path, exc)
        return store.add_note(job.id, f"could not move the input to the failed folder: {exc}")
    if moved is None:
        return store.get_or_raise(job.id)
    failed_relative = moved.relative_to(settings.failed_dir).as_posix()
    return store.set_original(job.id, "failed_dir", archived_path=failed_relative)


def locate_input(settings: Settings, job: Job) -> Path | None:
    """The input: in the inbox, or (for a retried job) where its original went."""
    candidates = [Path(settings.inbox) / job.input_path]
    if job.archived_path is not None:
        base = settings.failed_dir if job.original == "failed_dir" else settings.archive_dir
        candidates.append(Path(base) / job.archived_path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def dispose_original(settings: Settings, store: JobStore, job: Job, source: Path) -> Job:
    """archive / delete / keep, after the output is published. Failures are noted, never retried."""
    relative = PurePosixPath(job.input_path)
    from_failed_dir = job.original == "failed_dir" and source != Path(settings.inbox) / job.input_path
    if from_failed_dir:
        # A retried failed job worked: its error note is obsolete, and the original is handled like
        # any other (for "keep" it stays in the failed folder, where it already is).
        with contextlib.suppress(OSError):
            source.with_name(source.name + ".error.txt").unlink()
    elif source != Path(settings.inbox) / job.input_path:
        return job  # a retried done job, run from the archive: the original is already archived
    if settings.originals == "keep":
        return job
    try:
        if settings.originals == "delete":
            source.unlink()
            return store.set_original(job.id, "deleted")
        moved = move_file(source, Path(settings.archive_dir) / relative.parent, relative.name)
    except FileNotFoundError:
        return store.add_note(job.id, "the original had already been removed from the inbox")
    except OSError as exc:
        # The job is done; leaving the file in the inbox is safe (its version is recorded, so it is
        # never processed again), so say what happened and move on.
        log.error("job %d: could not %s the original %s: %s", job.id, settings.originals, source, exc)
        return store.add_note(job.id, f"could not {settings.originals} the original: {exc.strerror or exc}")
    archived = moved.relative_to(settings.archive_dir).as_posix()
    return store.set_original(job.id, "archived", archived_path=archived)


def output_name(input_path: str, extension: str) -> tuple[PurePosixPath, str]:
    # Inbox names are chosen by share users: the outbox gets them through the one set of name rules.
    relative = safe_relative_path(PurePosixPath(input_path))
    return relative.parent, safe_file_name(relative.stem + extension)


# -- the process ---------------------------------------------------------------------------------------


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        processor: Processor,
        send: Callable[[tuple[Any, ...]], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.processor = processor
        self.send = send

    def run_one(self) -> Job | None:
        """Claim and run the next job; None if the queue is empty."""
        job = self.store.claim_next()
        if job is None:
            return None
        self.send(("busy", job.id))
        log.info("job %d: %s (attempt %d)", job.id, job.input_path, job.attempts)
        try:
            final = self._run(job)
        except Exception as exc:  # anything unplanned: counts as an attempt, never loops forever
            log.exception("job %d: unexpected error", job.id)
            final = self._unexpected(job, exc)
        self.send(("finished", final.id, final.state, final.report))
        return final

    def _run(self, job: Job) -> Job:
        source = locate_input(self.settings, job)
        if source is None:
            # Deleted by someone, or the share is away (remount). Marking the original gone (not just
            # cancelling) means the same file showing up again is looked at as a new drop, not ignored.
            self.store.mark_cancelled(job.id, "the input file disappeared before it was restored")
            return self.store.set_original(job.id, "deleted")
        data = source.read_bytes()
        if source == Path(self.settings.inbox) / job.input_path and (
            hashlib.sha256(data).hexdigest() != job.content_sha256
        ):
            return self.store.mark_cancelled(
                job.id, "the file changed before it was restored; the new version is queued as its own job"
            )
        options = restore_options_from(job, self.settings)
        try:
            processed = self.processor.process(data, options, self._progress(job.id))
        except JobCancelled:
            return self.store.mark_cancelled(job.id, "cancelled while running")
        except BadImageError as exc:
            failed = self.store.fail(job.id, str(exc), kind="bad-input")
            return move_to_failed(self.settings, self.store, failed, str(exc), advice_for(exc, job.id))
        except RestoreError as exc:
            # Not the file's fault (weights missing, backend unavailable): keep the original in place.
            return self.store.fail(job.id, f"{exc} (the original is still in the inbox)", kind="error")
        return self._publish(job, source, processed)

    def _publish(self, job: Job, source: Path, processed: Processed) -> Job:
        folder, name = output_name(job.input_path, self.processor.extension(processed.format))
        try:
            published = publish_bytes(
                processed.data,
                Path(self.settings.outbox) / folder,
                name,
                self.settings.file_mode,
                self.settings.output_group,
            )
        except DiskFullError as exc:
            message = (
                f"the outbox is full: {exc}. The original is still in the inbox; the job is retried "
                "automatically when space returns (or run `restorer jobs retry "
                f"{job.id}`)"
            )
            failed = self.store.fail(job.id, message, kind="disk-full", report=processed.report)
            self.send(("disk_full", job.id, exc.needed_bytes, str(exc)))
            return failed
        relative = published.relative_to(self.settings.outbox).as_posix()
        note = None if published.name == name else f"output renamed to {published.name}: name was taken"
        report = {**processed.report, "input": job.input_path, "output": relative}
        done = self.store.finish(job.id, relative, len(processed.data), report, note=note)
        log.info("job %d: done -> %s", job.id, relative)
        return dispose_original(self.settings, self.store, done, source)

    def _unexpected(self, job: Job, exc: Exception) -> Job:
        what = f"{type(exc).__name__}: {exc}"
        if job.attempts < self.settings.max_attempts:
            self.store.add_note(job.id, f"attempt {job.attempts} failed ({what}); retrying")
            return self.store.requeue(job.id, refund_attempt=False)
        failed = self.store.fail(job.id, f"failed {job.attempts} times, last: {what}", kind="error")
        return move_to_failed(
            self.settings, self.store, failed, failed.error or what, advice_for(None, job.id)
        )

    def _progress(self, job_id: int) -> ProgressCallback:
        last = {"time": 0.0, "stage": ""}

        def on_progress(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if stage == last["stage"] and now - last["time"] < PROGRESS_WRITE_SECONDS and done < total:
                return
            last["time"], last["stage"] = now, stage
            start, end = STAGE_SPANS.get(stage, (0.0, 1.0))
            fraction = done / total if total > 0 else 1.0
            cancel = self.store.update_progress(job_id, start + (end - start) * fraction, stage)
            self.send(("beat", job_id))
            if cancel:
                raise JobCancelled()

        return on_progress


def worker_main(
    settings_json: str, conn: Connection, stop: Event, wake: Event, paused: Event, log_level: int
) -> None:
    """Entry point of the worker process."""
    # The service owns signals: Ctrl-C reaches the whole process group, and systemd (KillMode=mixed)
    # sends SIGTERM to the service only; the service decides whether the current image may finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(log_level, "%(asctime)s %(levelname)s worker: %(message)s")
    settings = Settings.model_validate_json(settings_json)
    # Below the service's priority: status answers stay fast while restoration saturates the CPU
    # (benchmarks/bench_api.py: busy p99 halves). With the CPU otherwise idle it costs nothing.
    os.nice(WORKER_NICENESS)

    def send(message: tuple[Any, ...]) -> None:
        conn.send(message)

    try:
        store = JobStore(settings.db_path)
        processor = load_processor(settings)
        info = processor.warm_up(settings.restore_options())
    except (RestoreError, OSError, ImportError) as exc:
        send(("fatal", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(2) from exc
    send(("ready", info))
    worker = Worker(settings, store, processor, send)
    beat_every = settings.heartbeat_seconds
    while not stop.is_set():
        if paused.is_set():
            send(("beat", None))
            wake.wait(beat_every)
            wake.clear()
            continue
        if worker.run_one() is None:
            send(("beat", None))
            wake.wait(beat_every)
            wake.clear()
    store.close()
    conn.close()


def spawn_context() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def process_title() -> str:
    return f"restorer-worker[{os.getpid()}]"
