"""How a file in the inbox becomes a job: the one path used by the folder watcher and by uploads.

`enqueue_file` takes a complete file (its relative path in the inbox and the version that was read)
and applies every rule once: the preset its first-level folder names, the options that preset gives,
the store's identity and duplicate rules, and, for a duplicate that is skipped, the configured
originals rule (archive/delete/keep), so a skipped copy never lingers in the inbox.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon import originals
from daemon.beneath import FileIdentity, open_beneath
from daemon.settings import Settings
from daemon.store import AddResult, JobStore
from pipeline import BadImageError, sniff_format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileVersion:
    """One version of a file: what the store's identity rules compare, and which file was read (a skipped
    duplicate is disposed of only if that very file still stands there)."""

    sha256: str
    size: int
    mtime: float
    identity: FileIdentity


def read_version(inbox: Path, relative: str) -> FileVersion:
    """Hash inbox/relative through a descriptor opened without following any link (NotAFileError for a
    link, FIFO, socket or device); size and mtime are those of the file that was read."""
    fd = open_beneath(inbox, relative)
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        digest = hashlib.sha256()
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return FileVersion(digest.hexdigest(), status.st_size, status.st_mtime, FileIdentity.of(status))


SNIFF_BYTES = 32  # enough for every magic sniff_format knows


def refusal_before_reading(
    settings: Settings, inbox: Path, relative: str, size: int
) -> tuple[str, str] | None:
    """(what was wrong, what to do) for a file intake must not read whole: larger than max_input_mb, or
    its first bytes are no known image type (a video, a document, an empty file). Every file is checked,
    so a non-image fails here with a plain reason instead of reaching a worker. None: go ahead and hash it."""
    limit = settings.max_input_mb * 1024 * 1024
    if size > limit:
        what = f"the file is {size / 1024**2:,.0f} MB, more than the {settings.max_input_mb} MB limit"
        return what, originals.TOO_LARGE_ADVICE
    fd = open_beneath(inbox, relative)
    with os.fdopen(fd, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    try:
        sniff_format(head)
    except BadImageError as exc:
        return str(exc), originals.advice_for(exc, 0)
    return None


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


def enqueue_file(settings: Settings, store: JobStore, relative: str, version: FileVersion) -> AddResult:
    """Record inbox/`relative` as a job (or recognise it as known); a skipped duplicate's original is
    disposed of at once. Blocking (SQLite, and a file move for a skipped duplicate)."""
    preset = preset_for(settings, relative)
    result = store.add(
        relative,
        version.sha256,
        version.size,
        version.mtime,
        preset=preset,
        options=settings.restore_options(preset).to_dict(),
        duplicate_content=settings.duplicate_content,
    )
    if not result.created:
        return result
    log.info("intake: job %d %s (%s)", result.job.id, relative, result.job.state)
    if result.job.state == "cancelled":  # skipped: same content as an earlier job
        source = originals.location(settings, result.job)
        if source is not None:
            seen = originals.Seen(source, version.identity, version.sha256)
            disposed = originals.dispose(settings, store, result.job, seen)
            return dataclasses.replace(result, job=disposed)
    return result
