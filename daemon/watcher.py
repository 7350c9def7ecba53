"""Watching the inbox: the observers behind intake.Intake, and which one a filesystem needs.

A native inotify Observer on a local filesystem; a PollingObserver on network shares, where inotify sees
nothing another SMB/NFS client writes. The polling observer stats and lists through daemon.beneath, so a
link is an entry, never a way into another folder. EventRelay hands event paths to the intake thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from daemon import fsinfo
from daemon.beneath import NotAFileError, lstat_beneath, open_folder, stat_root
from daemon.settings import Settings

log = logging.getLogger(__name__)

# Folders nested deeper than this below the inbox are reported and skipped: no photo collection needs
# more, and a hostile 1,000-deep tree must cost a log line, not the service (recursion, watches).
MAX_FOLDER_DEPTH = 32

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


class EventRelay(FileSystemEventHandler):
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
