"""The job loop: a worker process loads the models once, then restores queued jobs one at a time, in order.

It runs in its own process (multiprocessing "spawn": no inherited threads, locks or SQLite handles), so
a crash, a hang or a leak in the pipeline never takes the service, the watcher or the web page with it.
The service supervises it through a Pipe (daemon.messages) and restarts it when it dies or goes quiet.

One job, step by step:
  claim (attempts+1) -> read the input once, check it is still the version that was queued -> restore
  with progress written to the store -> encode -> publish to the outbox at the mirrored path ->
  record "done" -> only then archive / delete / keep the original (a failed move is noted, never
  retried: the job stays done and the file is never processed again).
Bad input (pipeline BadImageError) fails at once: the file moves to failed_dir at the same relative path
with `<name>.error.txt` beside it. ENOSPC while publishing fails the job cleanly, keeps the original
and tells the service, which pauses intake until space returns.

The loop is a "slot": claim -> read the input -> Processor.process -> publish -> finish -> dispose.
`Processor` is the seam between the job lifecycle and the work itself (PipelineProcessor runs the
pipeline in this process; tests pass a cheap one; another executor may call a remote actor). The
processor is chosen by whoever starts the slot (a constructor argument, a picklable factory for a
worker process), never by a setting. Messages to the supervisor: daemon.messages.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from daemon import admission, originals, schedule
from daemon.beneath import FileTooLargeError, NotAFileError, lstat_beneath, open_folder
from daemon.logs import configure_logging
from daemon.messages import (
    Beat,
    Busy,
    ChildSpec,
    DiskFull,
    EngineAccount,
    Fatal,
    Finished,
    Ready,
    WorkerMessage,
)
from daemon.names import safe_file_name, safe_relative_path
from daemon.publish import DiskFullError, PublishError, publish_bytes, publish_file
from daemon.settings import Settings
from daemon.store import Job, JobStore
from pipeline import (
    BadImageError,
    ProgressCallback,
    RestoredFile,
    RestoreError,
    RestoreOptions,
    stage_spans,
)

log = logging.getLogger(__name__)

# Where each pipeline stage sits on the job's 0..1 progress bar: the pipeline owns the stages and their order.
STAGE_SPANS: dict[str, tuple[float, float]] = stage_spans()
PROGRESS_WRITE_SECONDS = 0.5  # throttle: at most two progress writes per second (stage changes always)
WORKER_NICENESS = 10  # the worker yields the CPU to the HTTP servers and the watcher


@dataclass(frozen=True)
class Processed:
    """One restored file as the Worker publishes it: the encoded output, its format, the extension its name
    gets (worked out once, by the pipeline, and carried with the bytes, across a Ray reply too) and the
    image's report. The output is `data` in memory, or (a large output) `file`, an open unlinked temporary
    file holding it from offset 0, which the Worker publishes and closes."""

    data: bytes
    format: str  # "png", "jpg", "webp", "tiff"
    extension: str  # ".png", ".jpg", ".webp", ".tif"
    report: dict[str, Any]
    file: BinaryIO | None = None

    @classmethod
    def of(cls, restored: RestoredFile) -> Processed:
        """What pipeline.restore_bytes made, its report as the plain dict the store keeps."""
        return cls(
            restored.data, restored.format, restored.extension, restored.report.to_dict(), restored.file
        )

    @property
    def size(self) -> int:
        return os.fstat(self.file.fileno()).st_size if self.file is not None else len(self.data)

    def sha256(self) -> str:
        if self.file is None:
            return hashlib.sha256(self.data).hexdigest()
        self.file.seek(0)
        # typing.BinaryIO does not declare readinto(), which every binary file object has
        return hashlib.file_digest(self.file, "sha256").hexdigest()  # type: ignore[arg-type]


class Processor(Protocol):
    """What the worker runs for each job. The real one wraps pipeline.restorer.Restorer."""

    def warm_up(self, options: RestoreOptions) -> EngineAccount: ...

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed: ...


class PipelineProcessor:
    """The real pipeline: load_image -> Restorer.restore -> encode_image."""

    def __init__(self, settings: Settings) -> None:
        from pipeline import Restorer

        self._restorer = Restorer(settings.engine_config())
        self._max_pixels = settings.max_input_pixels
        self._weights_dir = settings.weights_dir
        self._cache_dir = settings.cache_dir

    def warm_up(self, options: RestoreOptions) -> EngineAccount:
        from pipeline import model_statuses

        self._restorer.warm_up(options)
        info = self._restorer.chain(options)[0].info  # the first step's backend: its own account of itself
        # Which models and face weights exist, for health and the page (status_site never imports torch).
        models = tuple(status.to_dict() for status in model_statuses(self._weights_dir, self._cache_dir))
        return EngineAccount(info.backend, info.device, info.precision, info.reason, models)

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        from pipeline import restore_bytes

        restored = restore_bytes(
            self._restorer, data, options, max_pixels=self._max_pixels, on_progress=on_progress
        )
        return Processed.of(restored)


# What starts a slot passes one of these (a class or module-level function, so it pickles by name).
ProcessorFactory = Callable[[Settings], Processor]


class JobCancelled(Exception):
    """Raised from the progress callback when someone cancelled the running job."""


class JobPaused(JobCancelled):
    """The queue was paused "now": the running job goes back to the queue, first in line. A kind of
    cancel, so every path that stops a running job (the Ray client's actor cancel too) stops it."""


def restore_options_from(job: Job, settings: Settings) -> RestoreOptions:
    """The options stored with the job (unknown keys from an older version are ignored)."""
    stored = {key: value for key, value in job.options.items() if key in RestoreOptions.model_fields}
    return settings.restore_options(job.preset if job.preset in settings.presets else None).replace(**stored)


def output_name(input_path: str, extension: str) -> tuple[PurePosixPath, str]:
    # Inbox names are chosen by share users: the outbox gets them through the one set of name rules.
    relative = safe_relative_path(PurePosixPath(input_path))
    return relative.parent, safe_file_name(relative.stem + extension)


# -- the process ---------------------------------------------------------------------------------------


class Worker:
    """One slot: runs queued jobs one at a time and reports to its supervisor through `send`."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        processor: Processor,
        send: Callable[[WorkerMessage], None],
        slot: str = "w1",
    ) -> None:
        self.settings = settings
        self.store = store
        self.processor = processor
        self.send = send
        self.slot = slot
        self.run_windows = settings.run_windows()
        self.zone = schedule.local_zone(os.environ.get("TZ"))
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def run_one(self) -> Job | None:
        """Claim and run the next job; None if the queue is empty, paused, or outside run_hours."""
        if not schedule.may_start(self.clock(), self.run_windows, self.zone):
            return None
        job = self.store.claim_next()
        if job is None:
            return None
        self.send(Busy(self.slot, job.id))
        log.info("job %d: %s (attempt %d)", job.id, job.input_path, job.attempts)
        try:
            final = self._run(job)
        except Exception as exc:  # anything unplanned: counts as an attempt, never loops forever
            log.exception("job %d: unexpected error", job.id)
            final = self._unexpected(job, exc)
        self.send(Finished(self.slot, final.id, final.state, EngineAccount.from_report(final.report)))
        return final

    def _run(self, job: Job) -> Job:
        source = originals.location(self.settings, job)
        try:
            limit = self.settings.max_input_bytes
            original = originals.read(source, limit) if source is not None else None
        except NotAFileError as exc:  # a link or special file took the photo's place: never followed
            return self._refuse(job, *originals.not_a_file_texts(exc.kind))
        except FileTooLargeError as exc:
            too_large = admission.too_large(exc.size, exc.limit)
            return self._refuse(job, too_large.what, too_large.advice)
        except FileNotFoundError:
            original = None
        if original is None:
            # Deleted by someone, or the share is away (remount). Marking the original gone (not just
            # cancelling) means the same file showing up again is looked at as a new drop, not ignored.
            self.store.mark_cancelled(job.id, "the input file disappeared before it was restored")
            return self.store.set_original(job.id, "deleted")
        if original.location.place == "inbox" and original.sha256 != job.content_sha256:
            return self.store.mark_cancelled(
                job.id, "the file changed before it was restored; the new version is queued as its own job"
            )
        own = self._published_before(job)
        if own is not None:  # a crash came between publishing and recording it: never publish twice
            note = "its output had been published before the worker stopped; recorded, not restored again"
            size = lstat_beneath(Path(self.settings.outbox), own).st_size
            done = self.store.finish(job.id, own, size, None, note)
            return originals.dispose(self.settings, self.store, done, original)
        options = restore_options_from(job, self.settings)
        try:
            processed = self.processor.process(original.data, options, self._progress(job.id))
        except JobPaused:
            log.info("job %d: back to the queue, first in line (the queue was paused now)", job.id)
            return self.store.requeue_first(job.id)
        except JobCancelled:
            return self.store.mark_cancelled(job.id, "cancelled while running")
        except BadImageError as exc:
            failed = self.store.fail(job.id, str(exc), kind="bad-input")
            advice = originals.advice_for(exc, job.id)
            return originals.move_to_failed(
                self.settings, self.store, failed, str(exc), advice, original.identity
            )
        except RestoreError as exc:
            # Not the file's fault (weights missing, backend unavailable): keep the original in place.
            return self.store.fail(job.id, f"{exc} (the original is still in the inbox)", kind="error")
        try:
            return self._publish(job, original, processed)
        finally:
            if processed.file is not None:
                processed.file.close()  # unlinked: closing frees its disk space

    def _refuse(self, job: Job, what: str, advice: str) -> Job:
        failed = self.store.fail(job.id, what, kind="bad-input")
        return originals.move_to_failed(self.settings, self.store, failed, what, advice)

    def _published_before(self, job: Job) -> str | None:
        """The outbox file (relative) an interrupted run of this job published, found by the fingerprint
        recorded before its rename; None when there is none."""
        fingerprint = self.store.publishing_of(job.id) if job.attempts > 1 else None
        if fingerprint is None:
            return None
        digest, _, size = fingerprint.partition(":")
        try:
            with open_folder(Path(self.settings.outbox), output_name(job.input_path, "")[0]) as folder:
                for name, status in folder.entries():
                    if stat.S_ISREG(status.st_mode) and status.st_size == int(size):
                        with os.fdopen(folder.open_regular(name), "rb") as handle:
                            if hashlib.file_digest(handle, "sha256").hexdigest() == digest:
                                return folder.relative_of(name)
        except OSError:  # the folder is gone, or a link now stands in its place
            return None
        return None

    def _publish(self, job: Job, original: originals.ReadOriginal, processed: Processed) -> Job:
        folder, name = output_name(job.input_path, processed.extension)
        fingerprint = f"{processed.sha256()}:{processed.size}"
        self.store.note_publishing(job.id, fingerprint)  # before the rename: a re-run recognises it
        outbox = Path(self.settings.outbox)
        mode, group = self.settings.file_mode, self.settings.output_group
        try:
            if processed.file is not None:
                published = publish_file(processed.file, outbox / folder, name, mode, group, root=outbox).path
            else:
                published = publish_bytes(processed.data, outbox / folder, name, mode, group, root=outbox)
        except DiskFullError as exc:
            message = (
                f"the outbox is full: {exc}. The original is still in the inbox; the job is retried "
                "automatically when space returns (or run `restorer jobs retry "
                f"{job.id}`)"
            )
            failed = self.store.fail(job.id, message, kind="disk-full", report=processed.report)
            self.send(DiskFull(self.slot, job.id, exc.needed_bytes, str(exc)))
            return failed
        except PublishError as exc:  # e.g. a symlinked folder planted in the outbox: retrying cannot help
            message = f"the output could not be published: {exc}. The original is still in the inbox"
            return self.store.fail(job.id, message, kind="error", report=processed.report)
        relative = published.relative_to(self.settings.outbox).as_posix()
        note = None if published.name == name else f"output renamed to {published.name}: name was taken"
        report = {**processed.report, "input": job.input_path, "output": relative}
        done = self.store.finish(job.id, relative, processed.size, report, note=note)
        log.info("job %d: done -> %s", job.id, relative)
        return originals.dispose(self.settings, self.store, done, original)

    def _unexpected(self, job: Job, exc: Exception) -> Job:
        what = f"{type(exc).__name__}: {exc}"
        if job.attempts < self.settings.max_attempts:
            self.store.add_note(job.id, f"attempt {job.attempts} failed ({what}); retrying")
            return self.store.requeue(job.id, refund_attempt=False)
        failed = self.store.fail(job.id, f"failed {job.attempts} times, last: {what}", kind="error")
        advice = originals.advice_for(None, job.id)
        return originals.move_to_failed(self.settings, self.store, failed, failed.error or what, advice)

    def _progress(self, job_id: int) -> ProgressCallback:
        last_time, last_stage = 0.0, ""

        def on_progress(stage: str, done: int, total: int) -> None:
            nonlocal last_time, last_stage
            now = time.monotonic()
            if stage == last_stage and now - last_time < PROGRESS_WRITE_SECONDS and done < total:
                return
            last_time, last_stage = now, stage
            start, end = STAGE_SPANS.get(stage, (0.0, 1.0))
            fraction = done / total if total > 0 else 1.0
            stop = self.store.update_progress(job_id, start + (end - start) * fraction, stage)
            self.send(Beat(self.slot, job_id))
            if stop == "pause":
                raise JobPaused()
            if stop == "cancel":
                raise JobCancelled()

        return on_progress


def worker_main(spec: ChildSpec) -> None:
    """Entry point of a local worker process: one slot, named as the process, running
    `spec.processor_factory(settings)`."""
    # The service owns signals: Ctrl-C reaches the whole process group, and systemd (KillMode=mixed)
    # sends SIGTERM to the service only; the service decides whether the current image may finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(spec.log_level, "%(asctime)s %(levelname)s worker: %(message)s")
    settings = Settings.from_child_json(spec.settings_json)
    # Below the service's priority: status answers stay fast while restoration saturates the CPU
    # (benchmarks/bench_api.py; docs/performance.md, "API and page"). With the CPU otherwise idle it
    # costs nothing.
    os.nice(WORKER_NICENESS)
    send: Callable[[WorkerMessage], None] = spec.conn.send
    slot = spec.name
    try:
        store = JobStore(settings.db_path)
        processor = spec.processor_factory(settings)
        engine = processor.warm_up(settings.restore_options())
    except (RestoreError, OSError, ImportError) as exc:
        send(Fatal(slot, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(2) from exc
    send(Ready(slot, engine))
    worker = Worker(settings, store, processor, send, slot)
    beat_every = settings.heartbeat_seconds
    while not spec.stop.is_set():
        if spec.paused.is_set() or worker.run_one() is None:
            send(Beat(slot, None))
            spec.wake.wait(beat_every)
            spec.wake.clear()
    store.close()
    spec.conn.close()


def spawn_context() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")
