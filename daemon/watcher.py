"""Intake: turn files that appear in the inbox into jobs, once each, only when they are complete.

Three sources feed ONE set of pending files (so a file seen by several is still queued once):
  - watchdog events (native inotify Observer, or PollingObserver on network shares, where inotify sees
    nothing another SMB/NFS client writes);
  - a startup scan (files already present produce no events);
  - a periodic full rescan (events can be lost: inotify queue overflow, a watcher restart, a remount).

A pending file becomes a job when its size AND mtime have not changed for stability_seconds (the
StabilityTracker's rule); then it is hashed and handed to intake.enqueue_file, the one path from a file
to a job, whose identity rules make a second row for the same file version impossible. Versions already
recorded (size, mtime) are remembered, so rescans and touches do not hash unchanged files again.

The watcher itself is watched: a dead observer thread, an unreachable inbox (share gone, EIO) or an
inotify limit (ENOSPC/EMFILE) is reported in health and recovered from (restart, or fall back to
polling), followed by a full rescan that finds what was missed without queuing anything twice.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISDIR, S_ISREG

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from daemon import fsinfo, originals
from daemon.beneath import NotAFileError, kind_of, lstat_beneath, open_folder, stat_root, walk
from daemon.health import HealthState
from daemon.intake import enqueue_file, read_version, refusal_before_reading, refuse_file
from daemon.names import is_junk, is_junk_dir
from daemon.settings import Settings
from daemon.stability import StabilityTracker
from daemon.store import AddResult, JobStore

log = logging.getLogger(__name__)

INOTIFY_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE})
# Folders nested deeper than this below the inbox are reported and skipped: no photo collection needs
# more, and a hostile 1,000-deep tree must cost a log line, not the service (recursion, watches).
MAX_FOLDER_DEPTH = 32
EVENTS_PER_PASS = 2000  # events handled between two stability checks

ObserverFactory = Callable[[str, str, float], BaseObserver]  # (mode, inbox, poll_seconds) -> observer


def default_observer(mode: str, inbox: str, poll_seconds: float) -> BaseObserver:
    if mode == "polling":
        # lstat and listings below the inbox through daemon.beneath: a link (even a folder swapped for one)
        # is an entry, never a way into another folder; listings stop at the depth limit (watchdog's
        # snapshot recurses, so a deeper tree would kill its thread).
        return PollingObserverVFS(
            beneath_lstat(inbox),
            depth_limited_scandir(inbox),  # type: ignore[arg-type]  # watchdog asks for os.DirEntry, reads .name
            polling_interval=poll_seconds,
        )
    return Observer()


def folder_depth(relative: str) -> int:
    """How deep a folder (posix, relative to the inbox) is: "" is 0, "a" is 1, "a/b" is 2."""
    return 0 if not relative else relative.count("/") + 1


def _relative_to(root: str, path: str | None) -> str:
    relative = os.path.relpath(os.path.normpath(path or "."), root)
    return "" if relative == "." else relative


def beneath_lstat(inbox: str) -> Callable[[str], os.stat_result]:
    root = os.path.normpath(inbox)

    def lstat(path: str) -> os.stat_result:
        relative = _relative_to(root, path)
        return stat_root(Path(root)) if not relative else lstat_beneath(Path(root), relative)

    return lstat


@dataclass(frozen=True)
class _Entry:
    name: str  # all watchdog's snapshot reads of a listing entry


def depth_limited_scandir(inbox: str) -> Callable[[str | None], Iterator[_Entry]]:
    root = os.path.normpath(inbox)

    def scandir(path: str | None) -> Iterator[_Entry]:
        relative = _relative_to(root, path)
        if folder_depth(relative) >= MAX_FOLDER_DEPTH:
            return iter(())
        try:
            with open_folder(Path(root), relative) as folder:
                return iter([_Entry(name) for name, _status in folder.entries()])
        except NotAFileError:  # a link stands in the folder's place now: nothing to list through it
            return iter(())

    return scandir


class _EventRelay(FileSystemEventHandler):
    """Runs on the observer thread: only hands paths over, never touches disk or the DB."""

    def __init__(self, events: queue.SimpleQueue[tuple[str, str]], wake: threading.Event) -> None:
        self._events = events
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.event_type in ("deleted", "moved") and not event.is_directory:
            # Gone from this name (archived, deleted, renamed): a later file here is looked at afresh.
            self._events.put(("gone", os.fsdecode(event.src_path)))
            if event.event_type == "deleted":
                return
        if event.event_type == "deleted":
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        if path:
            self._events.put(("dir" if event.is_directory else "file", os.fsdecode(path)))
        self._wake.set()


def choose_mode(settings: Settings) -> tuple[str, str]:
    """(mode, reason) for the configured watch_mode; auto polls on network filesystems."""
    where = fsinfo.describe(settings.inbox)
    if settings.watch_mode == "native":
        return "native", f"watch_mode=native (inbox on {where})"
    if settings.watch_mode == "polling":
        return "polling", f"watch_mode=polling, every {settings.poll_seconds:g} s (inbox on {where})"
    network = fsinfo.network_reason(settings.inbox)
    if network is not None:
        return "polling", (
            f"inbox is on a {network} ({where}): inotify cannot see files other machines "
            f"write, so it is polled every {settings.poll_seconds:g} s"
        )
    return "native", f"inbox is on a local filesystem ({where}): inotify events"


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
            refusal = refusal_before_reading(self.settings, self._inbox, relative, stable.st_size)
            if refusal is not None:
                self._refuse(relative, stable, *refusal)
                return
            version = read_version(self._inbox, relative)
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
        if (version.size, version.mtime) != (stable.st_size, stable.st_mtime):
            self._pending.see(relative, version.size, version.mtime)  # changed while hashed: wait again
            return
        result = enqueue_file(self.settings, self.store, relative, version)
        self._done_with(relative, stable, result)

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
            observer.schedule(_EventRelay(self._events, self._wake), str(self._inbox), recursive=True)
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
