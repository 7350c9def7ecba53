"""How a file in the inbox becomes a job: the one path used by the folder watcher and by uploads.

`read_entry` opens a stable inbox file once (beneath the inbox, no link followed), admits it
(daemon/admission.py) and hashes the very file it admitted. `enqueue_file` takes a complete, admitted
file (its relative path in the inbox, the version that was read, what its header says) and applies
every rule once: the preset its first-level folder names, the options that preset gives,
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
from typing import BinaryIO

from daemon import originals
from daemon.admission import Admission, Admitted, admit
from daemon.beneath import FileIdentity, open_beneath
from daemon.settings import Settings
from daemon.store import AddResult, JobStore

log = logging.getLogger(__name__)


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
        options=dataclasses.asdict(settings.restore_options(preset)),
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
    settings: Settings, store: JobStore, relative: str, version: FileVersion, admitted: Admitted
) -> AddResult:
    """Record inbox/`relative` as a job (or recognise it as known); a skipped duplicate's original is
    disposed of at once. Blocking (SQLite, and a file move for a skipped duplicate). The admitted size is
    recorded with it: what the queue's estimates count, without reading the file again."""
    preset = preset_for(settings, relative)
    result = store.add(
        relative,
        version.sha256,
        version.size,
        version.mtime,
        preset=preset,
        options=dataclasses.asdict(settings.restore_options(preset)),
        duplicate_content=settings.duplicate_content,
        input_megapixels=admitted.megapixels,
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
