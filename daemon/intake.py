"""Intake: turn files that appear in the inbox into jobs, once each, only when they are complete.

Three sources feed ONE set of pending files (so a file seen by several is still queued once):
  - watchdog events (native inotify Observer, or PollingObserver on network shares, where inotify sees
    nothing another SMB/NFS client writes);
  - a startup scan (files already present produce no events);
  - a periodic full rescan (events can be lost: inotify queue overflow, a watcher restart, a remount).

A pending file becomes a job when its size AND mtime have not changed for stability_seconds (the
StabilityTracker's rule); then `read_entry` opens it once (beneath the inbox, no link followed), admits
it (daemon/admission.py: a refused file becomes a failed job with the pipeline's reason) and hashes the
very file it admitted, and enqueue_file, the one path from a file to a job, records it; the store's
identity rules make a second row for the same file version impossible. Versions already recorded
(size, mtime) are remembered, so rescans and touches do not hash unchanged files again.

The watcher itself is watched: a dead observer thread, an unreachable inbox (share gone, EIO) or an
inotify limit (ENOSPC/EMFILE) is reported in health and recovered from (restart, or fall back to
polling), followed by a full rescan that finds what was missed without queuing anything twice. The
observers themselves (native or polling, and which a filesystem needs) are in daemon/watcher.py.

`enqueue_file` is that path for the folder watcher (Intake, below) and for uploads. It takes a complete,
admitted file (its relative path in the inbox, the version that was read, what its header says) and
applies every rule once: the preset its first-level folder names, the options that preset gives (with an
upload's chosen model instead of the preset's, when it chose one), the store's identity and duplicate
rules, and, for a duplicate that is skipped, the configured originals rule (archive/delete/keep), so a
skipped copy never lingers in the inbox.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from stat import S_ISDIR, S_ISREG
from typing import BinaryIO

from watchdog.observers.api import BaseObserver

from daemon import fsinfo, originals
from daemon.admission import Admission, Admitted, Refused, admit
from daemon.beneath import FileIdentity, NotAFileError, kind_of, lstat_beneath, open_beneath, stat_root, walk
from daemon.health import HealthState
from daemon.names import is_junk, is_junk_dir
from daemon.settings import Settings
from daemon.stability import StabilityTracker
from daemon.store import AddResult, JobStore
from daemon.watcher import (
    MAX_FOLDER_DEPTH,
    EventRelay,
    ObserverFactory,
    choose_mode,
    default_observer,
    folder_depth,
)

log = logging.getLogger(__name__)

INOTIFY_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE})
EVENTS_PER_PASS = 2000  # events handled between two stability checks


@dataclass(frozen=True)
class FileVersion:
    """One version of a file: what the store's identity rules compare, and which file was read (a skipped
    duplicate is disposed of only if that very file still stands there)."""

    sha256: str
    size: int
    mtime: float
    identity: FileIdentity


@dataclass(frozen=True)
class Entry:
    """What intake learned from one descriptor of an inbox file."""

    admission: Admission
    size: int  # after reading: a file that changed since it looked stable is waited for again
    mtime: float
    version: FileVersion | None = None  # an admitted file's: the content that was admitted


def read_entry(settings: Settings, inbox: Path, relative: str) -> Entry:
    """Admit inbox/relative and, when admitted, hash that same file, through one descriptor opened without
    following any link (NotAFileError for a link, FIFO, socket or device)."""
    fd = open_beneath(inbox, relative)
    with os.fdopen(fd, "rb") as handle:
        admission = admit(settings, relative, handle)
        version = _version(handle) if isinstance(admission, Admitted) else None
        status = os.fstat(handle.fileno())
    return Entry(admission, status.st_size, status.st_mtime, version)


def _version(handle: BinaryIO) -> FileVersion:
    handle.seek(0)
    status = os.fstat(handle.fileno())
    digest = hashlib.sha256()
    while chunk := handle.read(1024 * 1024):
        digest.update(chunk)
    return FileVersion(digest.hexdigest(), status.st_size, status.st_mtime, FileIdentity.of(status))


def refuse_file(
    settings: Settings, store: JobStore, relative: str, status: os.stat_result, what: str, advice: str
) -> AddResult:
    """Record an inbox entry intake will not read as a failed job with a reason, and set it aside (a link
    or special file is removed, never followed). Its identity is the entry's own (no content is read)."""
    entry = f"refused {relative} {status.st_dev} {status.st_ino} {status.st_size} {status.st_mtime_ns}"
    preset = preset_for(settings, relative)
    result = store.add(
        relative,
        hashlib.sha256(entry.encode()).hexdigest(),
        status.st_size,
        status.st_mtime,
        preset=preset,
        options=settings.restore_options(preset).to_dict(),
        refused=what,
    )
    if not result.created:
        return result
    log.warning("intake: job %d %s refused: %s", result.job.id, relative, what)
    moved = originals.move_to_failed(settings, store, result.job, what, advice, FileIdentity.of(status))
    return dataclasses.replace(result, job=moved)


def preset_for(settings: Settings, relative: str) -> str | None:
    """The preset a first-level inbox folder named like one applies (`2x/photo.jpg` -> "2x")."""
    parts = PurePosixPath(relative).parts
    if len(parts) > 1 and parts[0] in settings.presets:
        return parts[0]
    return None


def enqueue_file(
    settings: Settings,
    store: JobStore,
    relative: str,
    version: FileVersion,
    admitted: Admitted,
    *,
    model: tuple[str, ...] | None = None,
) -> AddResult:
    """Record inbox/`relative` as a job (or recognise it as known); a skipped duplicate's original is
    disposed of at once. Blocking (SQLite, and a file move for a skipped duplicate). The admitted size is
    recorded with it: what the queue's estimates count, without reading the file again.

    model: an upload's chosen model (a chain's ids, in order), instead of the preset's or the default;
    the caller has checked that each is usable. The watcher passes none."""
    preset = preset_for(settings, relative)
    options = settings.restore_options(preset)
    if model is not None:
        options = options.replace(model=model)
    result = store.add(
        relative,
        version.sha256,
        version.size,
        version.mtime,
        preset=preset,
        options=options.to_dict(),
        duplicate_content=settings.duplicate_content,
        input_megapixels=admitted.megapixels,
    )
    if not result.created:
        if model is not None and result.job.options != options.to_dict():
            # The watcher saw the just-published upload and recorded it first, with the preset's model:
            # the upload's choice is what its sender asked for, so it wins while no worker has claimed it.
            job = store.set_queued_options(result.job.id, options.to_dict())
            return dataclasses.replace(result, job=job)
        return result
    log.info("intake: job %d %s (%s)", result.job.id, relative, result.job.state)
    if result.job.state == "cancelled":  # skipped: same content as an earlier job
        source = originals.location(settings, result.job)
        if source is not None:
            seen = originals.Seen(source, version.identity, version.sha256)
            disposed = originals.dispose(settings, store, result.job, seen)
            return dataclasses.replace(result, job=disposed)
    return result


class Intake:
    """Owns the observer and the pending set; runs on its own thread. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        health: HealthState,
        on_job: Callable[[AddResult], None] | None = None,
        observer_factory: ObserverFactory = default_observer,
    ) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self.on_job = on_job
        self._observer_factory = observer_factory
        self._inbox = Path(settings.inbox)
        self._events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._pending = StabilityTracker(settings.stability_seconds)
        self._recorded: dict[str, tuple[int, float]] = {}
        self._observer: BaseObserver | None = None
        self._mode, self._mode_reason = "native", ""
        self._forced_polling_reason: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by the observer thread on every event, and by stop()
        self._paused = threading.Event()
        self._rescan_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox_ok = True
        self._root_identity: tuple[int, int] | None = None
        self._too_deep_folders: set[str] = set()
        self.scans = 0  # full scans done (tests and benchmarks wait on it)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._recorded = dict(self.store.inbox_versions())
        self._mode, self._mode_reason = choose_mode(self.settings)
        log.info("intake: %s mode (%s)", self._mode, self._mode_reason)
        self.health.update(
            watch_mode=self._mode,
            watch_mode_reason=self._mode_reason,
            inbox_filesystem=fsinfo.describe(self._inbox),
        )
        self._root_identity = _identity(self._inbox)
        self._start_observer()
        self._scan("startup")
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._stop_observer()
        self.health.update(watcher_alive=False, watcher_error="stopped")

    def pause(self, reason: str) -> None:
        if not self._paused.is_set():
            log.warning("intake paused: %s", reason)
        self._paused.set()
        self.health.pause_intake(reason)

    def resume(self) -> None:
        if self._paused.is_set():
            log.info("intake resumed")
        self._paused.clear()
        self.health.resume_intake()

    @property
    def mode(self) -> str:
        return self._mode

    def request_rescan(self) -> None:
        self._rescan_requested.set()
        self._wake.set()

    @property
    def observer(self) -> BaseObserver | None:
        return self._observer

    # -- the loop -------------------------------------------------------------------------------------

    def _tick_seconds(self) -> float:
        return max(0.05, min(0.5, self.settings.stability_seconds / 4))

    def _wait(self) -> None:
        """Sleep until an event arrives, the next pending file is due to be stable, or a tick passes
        (the tick bounds how late a change between two looks is noticed)."""
        timeout = self._tick_seconds()
        due_in = self._pending.seconds_until_due()
        if due_in is not None and not self._paused.is_set():
            timeout = min(timeout, max(0.005, due_in))
        self._wake.wait(timeout)
        self._wake.clear()

    def _run(self) -> None:
        next_rescan = time.monotonic() + self.settings.rescan_seconds
        next_check = time.monotonic() + self.settings.poll_seconds
        while not self._stop.is_set():
            try:
                self._drain_events()
                self._check_pending()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + min(self.settings.poll_seconds, 5.0)
                    self._check_watcher()
                if now >= next_rescan or self._rescan_requested.is_set():
                    self._rescan_requested.clear()
                    next_rescan = now + self.settings.rescan_seconds
                    self._scan("rescan")
            except Exception:  # the intake must never die silently: log, report, keep going
                log.exception("intake loop error")
                self.health.update(watcher_error="intake loop error (see log); retrying")
            self._wait()

    def _drain_events(self) -> None:
        """Handle up to EVENTS_PER_PASS queued events, walking each folder named once: a flood of events (a
        share user swapping a folder back and forth) must not keep the stability checks from running."""
        folders: dict[str, None] = {}
        for _ in range(EVENTS_PER_PASS):
            try:
                kind, path = self._events.get_nowait()
            except queue.Empty:
                break
            relative = self._relative(path)
            if relative is None:
                continue
            if kind == "gone":
                self._recorded.pop(relative, None)
            elif kind == "dir":
                if not is_junk(relative + "/x"):  # a folder moved in: inotify may report only the folder
                    folders[relative] = None
            else:
                self._notice(relative)
        else:
            self._wake.set()  # more are queued: come back without waiting
        for relative in folders:
            self._walk(relative)

    def _relative(self, path: str) -> str | None:
        try:
            relative = Path(path).relative_to(self._inbox)
        except ValueError:
            return None
        text = relative.as_posix()
        return None if text in ("", ".") else text

    def _notice(self, relative: str, stat: os.stat_result | None = None) -> None:
        """A file may be new or changed: add it to the pending set unless it is junk or known."""
        if relative in self._pending or is_junk(relative):
            return
        if stat is None:
            try:
                stat = lstat_beneath(self._inbox, relative)
            except (FileNotFoundError, NotAFileError):  # gone, or a link stands on the way now
                return
            except OSError as exc:
                log.warning("intake: cannot stat %s: %s", relative, exc)
                return
        if S_ISDIR(stat.st_mode):
            return
        if self._recorded.get(relative) == (stat.st_size, stat.st_mtime):
            return
        self._pending.see(relative, stat.st_size, stat.st_mtime)

    def _check_pending(self) -> None:
        for relative in self._pending:
            try:
                stat = lstat_beneath(self._inbox, relative)
            except (FileNotFoundError, NotAFileError):
                # Deleted (or renamed) before it was stable, or its folder was swapped for a link: no job.
                # A folder moved back in is walked again (its "dir" event).
                self._pending.forget(relative)
                continue
            except OSError as exc:
                log.warning("intake: cannot stat %s, will retry at the next scan: %s", relative, exc)
                self._pending.forget(relative)
                continue
            stable = self._pending.see(relative, stat.st_size, stat.st_mtime)
            if stable and not self._paused.is_set():
                self._record(relative, stat)
        self.health.update(pending_files=len(self._pending))

    def _record(self, relative: str, stable: os.stat_result) -> None:
        if not S_ISREG(stable.st_mode):  # a link, FIFO, socket or device: refused, never opened
            self._refuse_entry(relative, stable, kind_of(stable.st_mode))
            return
        try:
            entry = read_entry(self.settings, self._inbox, relative)
        except NotAFileError as exc:  # it turned into one since the look
            self._refuse_entry(relative, stable, exc.kind)
            return
        except FileNotFoundError:
            self._pending.forget(relative)
            return
        except OSError as exc:
            log.warning("intake: cannot read %s, will retry at the next scan: %s", relative, exc)
            self._pending.forget(relative)
            return
        if (entry.size, entry.mtime) != (stable.st_size, stable.st_mtime):
            self._pending.see(relative, entry.size, entry.mtime)  # changed while read: wait again
            return
        admission = entry.admission
        if isinstance(admission, Refused):
            self._refuse(relative, stable, admission.what, admission.advice)
        elif isinstance(admission, Admitted) and entry.version is not None:
            self._done_with(
                relative, stable, enqueue_file(self.settings, self.store, relative, entry.version, admission)
            )
        else:  # Ignored: a junk name (the watcher skips those before they are pending)
            self._pending.forget(relative)

    def _refuse_entry(self, relative: str, stable: os.stat_result, kind: str) -> None:
        self._refuse(relative, stable, *originals.not_a_file_texts(kind))

    def _refuse(self, relative: str, stable: os.stat_result, what: str, advice: str) -> None:
        result = refuse_file(self.settings, self.store, relative, stable, what, advice)
        self._done_with(relative, stable, result)

    def _done_with(self, relative: str, stable: os.stat_result, result: AddResult) -> None:
        self._pending.forget(relative)
        self._recorded[relative] = (stable.st_size, stable.st_mtime)
        if result.created and self.on_job is not None:
            self.on_job(result)

    # -- scans ----------------------------------------------------------------------------------------

    def _scan(self, why: str) -> None:
        """Walk the whole inbox; an error on the inbox itself marks it unreachable."""
        try:
            if not S_ISDIR(stat_root(self._inbox).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self._inbox))
            seen: set[str] = set()
            self._walk("", seen)
        except OSError as exc:
            self._inbox_unreachable(exc)
            return
        # Forget recorded versions of files that are gone, so a later re-drop is looked at again.
        for relative in [r for r in self._recorded if r not in seen]:
            del self._recorded[relative]
        self.scans += 1
        self.health.update(
            last_scan_at=datetime.now(UTC).isoformat(timespec="seconds"), pending_files=len(self._pending)
        )
        if not self._inbox_ok:
            self._inbox_back()
        log.debug("intake: %s scan done, %d pending", why, len(self._pending))

    def _walk(self, relative: str, seen: set[str] | None = None) -> None:
        """Notice every entry below the inbox folder `relative` (daemon.beneath.walk: an explicit stack,
        folder descriptors, a link is an entry to report, never a way into another folder); folders past
        MAX_FOLDER_DEPTH are skipped. An error on the inbox itself is raised, on a folder below it logged."""
        try:
            for folder, entries in walk(self._inbox, relative, self._descend, self._cannot_list):
                for name, status in entries:
                    if S_ISDIR(status.st_mode):
                        continue
                    child = folder.relative_of(name)
                    if seen is not None:
                        seen.add(child)
                    self._notice(child, status)
        except (FileNotFoundError, NotAFileError) as exc:
            if not relative:
                raise
            # Gone again, or a link stands in its place now (a folder swapped back and forth): routine churn
            # a share user can cause at will, not worth a warning each time.
            log.debug("intake: not walking %s: %s", relative, exc)
        except OSError as exc:
            if not relative:
                raise
            self._cannot_list(relative, exc)

    def _descend(self, relative: str) -> bool:
        if is_junk_dir(relative.rsplit("/", 1)[-1]):
            return False
        if folder_depth(relative) > MAX_FOLDER_DEPTH:
            self._too_deep(relative)
            return False
        return True

    def _cannot_list(self, relative: str, exc: OSError) -> None:
        log.warning("intake: cannot list %s: %s", relative, exc)

    def _too_deep(self, relative: str) -> None:
        if relative in self._too_deep_folders:
            return
        self._too_deep_folders.add(relative)
        log.warning(
            "intake: skipping %s: folders nested deeper than %d levels are not watched or scanned",
            relative,
            MAX_FOLDER_DEPTH,
        )
        self.health.update(too_deep_folders=sorted(self._too_deep_folders)[:10])

    # -- watching the watcher -------------------------------------------------------------------------

    def _start_observer(self) -> None:
        mode = "polling" if self._forced_polling_reason else self._mode
        try:
            observer = self._observer_factory(mode, str(self._inbox), self.settings.poll_seconds)
            observer.schedule(EventRelay(self._events, self._wake), str(self._inbox), recursive=True)
            observer.start()
        except RecursionError:
            if mode != "native":
                raise
            # inotify's recursive watch walks the whole tree with recursion: a hostile depth kills it.
            # Polling stops at MAX_FOLDER_DEPTH, so the rest of the inbox stays watched.
            self._forced_polling_reason = (
                f"the inbox holds folders nested deeper than {MAX_FOLDER_DEPTH} levels, which inotify "
                f"cannot watch: polling every {self.settings.poll_seconds:g} s instead (remove them)"
            )
            self._mode, self._mode_reason = "polling", self._forced_polling_reason
            log.warning("intake: %s", self._forced_polling_reason)
            self.health.update(watch_mode="polling", watch_mode_reason=self._forced_polling_reason)
            return self._start_observer()
        except OSError as exc:
            if mode == "native" and exc.errno in INOTIFY_LIMIT_ERRNOS:
                self._fall_back_to_polling(exc)
                return self._start_observer()
            self._observer = None
            self.health.update(watcher_alive=False, watcher_error=f"cannot watch the inbox: {exc}")
            log.error("intake: cannot watch %s: %s", self._inbox, exc)
            return None
        self._observer = observer
        self.health.update(watcher_alive=True, watcher_error=self._forced_polling_reason, watch_mode=mode)
        return None

    def _fall_back_to_polling(self, exc: OSError) -> None:
        limit = "inotify watch limit (fs.inotify.max_user_watches)"
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            limit = "inotify instance/file limit (fs.inotify.max_user_instances or open files)"
        self._forced_polling_reason = (
            f"{limit} reached ({os.strerror(exc.errno or 0)}): polling the inbox every "
            f"{self.settings.poll_seconds:g} s instead; raise the limit and restart to use inotify"
        )
        self._mode, self._mode_reason = "polling", self._forced_polling_reason
        log.warning("intake: %s", self._forced_polling_reason)
        self.health.update(watch_mode="polling", watch_mode_reason=self._forced_polling_reason)

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)
        except Exception:  # a broken observer may fail to stop; it is replaced either way
            log.debug("intake: observer stop failed", exc_info=True)

    def observer_alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def _check_watcher(self) -> None:
        try:
            if not S_ISDIR(stat_root(self._inbox).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self._inbox))
        except OSError as exc:
            self._inbox_unreachable(exc)
            return
        if not self._inbox_ok:
            self._scan("inbox back")
            return
        identity = _identity(self._inbox)
        if identity != self._root_identity:
            # A share remounted over (or under) the inbox: the old watches see the wrong folder.
            self._root_identity = identity
            self._restart_watcher("the inbox folder was remounted or replaced")
            return
        if not self.observer_alive():
            self._restart_watcher("the folder watcher thread stopped")

    def _restart_watcher(self, why: str) -> None:
        log.warning("intake: %s; restarting it and rescanning", why)
        self.health.update(watcher_alive=False, watcher_error=why)
        self._stop_observer()
        self._start_observer()
        self.health.update(watcher_restarts=self.health.get("watcher_restarts") + 1)
        self._scan("watcher restart")  # catches files created while no one was watching

    def _inbox_unreachable(self, exc: OSError) -> None:
        if self._inbox_ok:
            log.error("intake: inbox %s unreachable: %s", self._inbox, exc)
        self._inbox_ok = False
        self.health.update(
            inbox_reachable=False,
            inbox_error=f"{exc.strerror or exc} ({self._inbox})",
            watcher_alive=False,
            watcher_error="waiting for the inbox to come back",
        )

    def _inbox_back(self) -> None:
        log.info("intake: inbox %s reachable again", self._inbox)
        self._inbox_ok = True
        self._root_identity = _identity(self._inbox)
        self.health.update(inbox_reachable=True, inbox_error=None)
        # The old observer watched inodes that may be gone (remount): start a fresh one.
        self._stop_observer()
        self._start_observer()
        self.health.update(watcher_restarts=self.health.get("watcher_restarts") + 1)
        self._scan("after inbox came back")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = stat_root(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
