"""Retention: archived originals older than `archive_days` and files set aside in the failed folder older
than `failed_days` (with their .error.txt) are deleted; their job records stay, marked with `cleaned_at`
and a note, so the history still says what happened and when.

What may be deleted is narrow on purpose, and it never depends on free space: only the original of a job
that is `done` and whose record says it is in the archive, or of a job that is `failed` and whose record
says it is in failed_dir, and only once the job finished longer ago than the setting. Nothing in the inbox
or the outbox, nothing not yet restored, is ever a candidate. Each file is read beneath its folder (no
link followed) and deleted only if its content is the one the job recorded (same size and sha256), and
only that very file (its device and inode), so a file that took its place is never deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from daemon.beneath import FileIdentity, lstat_beneath, read_regular, unlink_beneath
from daemon.settings import Settings
from daemon.store import Job, JobStore

log = logging.getLogger(__name__)

BATCH = 200  # jobs examined per query; a sweep goes on until no candidate is left


@dataclass(frozen=True)
class Rule:
    """One kind of file retention may delete: the jobs' state, where their original is, its folder."""

    state: str
    place: str
    folder: Path
    days: float
    what: str  # for notes and logs
    companion: str | None = None  # a file beside it that goes with it


def rules(settings: Settings) -> list[Rule]:
    found: list[Rule] = []
    if settings.archive_days is not None:
        found.append(
            Rule("done", "archived", Path(settings.archive_dir), settings.archive_days, "archived original")
        )
    if settings.failed_days is not None:
        found.append(
            Rule(
                "failed",
                "failed_dir",
                Path(settings.failed_dir),
                settings.failed_days,
                "failed file",
                ".error.txt",
            )
        )
    return found


def sweep(settings: Settings, store: JobStore, now: datetime) -> list[int]:
    """Delete what is past its retention at `now`; return the ids of the jobs whose original was removed."""
    cleaned: list[int] = []
    for rule in rules(settings):
        cutoff = now - timedelta(days=rule.days)
        while batch := store.past_retention(rule.state, rule.place, cutoff, BATCH):
            for job in batch:
                if _clean_one(store, rule, job, now):
                    cleaned.append(job.id)
    return cleaned


def _clean_one(store: JobStore, rule: Rule, job: Job, now: datetime) -> bool:
    relative = job.original_path or ""
    try:
        identity = _recorded_file(rule.folder, relative, job)
        if identity is None:
            _leave(store, rule, job, "another file stands there")
            return False
        unlink_beneath(rule.folder, relative, identity)
    except FileNotFoundError:
        _leave(store, rule, job, "it was already gone")
        return False
    except OSError as exc:  # a link or special file on the way, a file swapped in meanwhile
        _leave(store, rule, job, f"it could not be checked ({exc.strerror or exc})")
        return False
    if rule.companion is not None:
        # Gone already (the user removed the note) is fine: the photo is what mattered.
        with contextlib.suppress(OSError):
            unlink_beneath(rule.folder, relative + rule.companion)
    days = f"{rule.days:g} day" + ("" if rule.days == 1 else "s")
    store.mark_cleaned(job.id, rule.place, now, f"{rule.what} removed after {days} (retention)")
    log.info("retention: job %d: removed %s %s", job.id, rule.what, rule.folder / relative)
    return True


def _recorded_file(folder: Path, relative: str, job: Job) -> FileIdentity | None:
    """The identity of the file at folder/relative if it is the one the job recorded: a regular file of
    the recorded size with the recorded mtime (a move keeps it), or else the recorded content."""
    status = lstat_beneath(folder, relative)
    if not stat.S_ISREG(status.st_mode) or status.st_size != job.size_bytes:
        return None
    if status.st_mtime == job.mtime:
        return FileIdentity.of(status)
    data, identity = read_regular(folder, relative, max_bytes=job.size_bytes)
    same = identity == FileIdentity.of(status) and hashlib.sha256(data).hexdigest() == job.content_sha256
    return identity if same else None


def _leave(store: JobStore, rule: Rule, job: Job, why: str) -> None:
    """The record no longer tracks a file of this job there: say so once, delete nothing."""
    log.warning(
        "retention: job %d: %s %s left alone: %s",
        job.id,
        rule.what,
        rule.folder / (job.original_path or ""),
        why,
    )
    store.set_original(
        job.id, "deleted", note=f"retention left {rule.folder.name}/{job.original_path}: {why}"
    )
