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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon import originals
from daemon.settings import Settings
from daemon.store import AddResult, JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileVersion:
    """One version of a file: what the store's identity rules compare."""

    sha256: str
    size: int
    mtime: float


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


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
        options=dataclasses.asdict(settings.restore_options(preset)),
        duplicate_content=settings.duplicate_content,
    )
    if not result.created:
        return result
    log.info("intake: job %d %s (%s)", result.job.id, relative, result.job.state)
    if result.job.state == "cancelled":  # skipped: same content as an earlier job
        source = originals.location(settings, result.job)
        if source is not None:
            disposed = originals.dispose(settings, store, result.job, source)
            return dataclasses.replace(result, job=disposed)
    return result
